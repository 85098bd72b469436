"""The page's Extended JSON rendering (ejson.js) in Chromium: whatever a
document holds, every event is shown, and no script error is raised."""

import json

from .helpers import scaled
from .test_browser_documents import (
    FAKE_SOCKETS,
    HELLO,
    SITE,
    change,
    deliver,
    doc,
    serve_site,
    wait_js,
)

EJSON = "/wsproxy-static/ejson.js"

# Field values a document writer can store that look like Extended JSON
# but are not. A field named toString (a JSON object has it as its own
# property) makes String() and template strings throw.
NOT_EXTENDED_JSON = [
    {"$oid": "zz"},
    {"$date": {"$numberLong": "999999999999999999"}},
    {"$numberDecimal": "1e99999999"},
    {"$code": "x", "$scope": 5},
    {"$date": "not-a-date"},
    {"$numberLong": "abc"},
    {"$timestamp": {"t": -1, "i": -1}},
    {"$uuid": "nope"},
    {"$timestamp": {"t": {"toString": 1}, "i": 1}},
    {"$regularExpression": {"pattern": "a", "options": {"toString": 1}}},
    {"$binary": {"base64": "AA==", "subType": {"toString": 1}}},
    {"$binary": "AA==", "$type": {"toString": 1}},
    {"$date": {"toString": 1}},
    {"toString": 1, "valueOf": 1},
]

RENDER_ALL = """async ([module, values]) => {
  const m = await import(module);
  const failed = [];
  for (const v of values) {
    try {
      m.compactValue(v);
      m.renderEjson(v);
      m.renderEjson({ doc: v });
    } catch (e) {
      failed.push(JSON.stringify(v) + ': ' + e);
    }
  }
  return failed;
}"""


def test_ejson_renders_every_value_without_throwing(browser_page):
    page = browser_page
    serve_site(page)
    page.goto(f"{SITE}/healthz")
    assert page.evaluate(RENDER_ALL, [EJSON, NOT_EXTENDED_JSON]) == []


def test_the_page_shows_every_event_whatever_its_document_holds(browser_page):
    page = browser_page
    page.add_init_script(FAKE_SOCKETS)
    serve_site(page)
    page.goto(f"{SITE}/")
    wait_js(page, "sockets.length === 1")
    deliver(page, HELLO)
    page.wait_for_selector("body[data-state=live]", timeout=scaled(5000))
    count = len(NOT_EXTENDED_JSON)
    for n, value in enumerate(NOT_EXTENDED_JSON):
        deliver(page, change("insert", n, doc(n, v=value)))
    deliver(page, change("insert", count, doc(count, v="after")))
    wait_js(
        page, "n => document.querySelectorAll('li.event-row').length === n", count + 1
    )
    # Each row opens to the full event.
    for row in page.query_selector_all("li.event-row"):
        row.click()
    assert page.locator("li.event-row pre.ejson").count() == count + 1
    shown = page.inner_text("#events")
    assert json.dumps("after") in shown and "zz" in shown
    assert not page.script_errors
