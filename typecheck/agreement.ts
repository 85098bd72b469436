// wsproxy-client.d.ts against wsproxy-client.js: the same exports, the
// same public members on each class, each function and method taking the
// same number of arguments. `tsc` infers the JavaScript's shape from a copy
// of the file (./build/, made by dev.py: beside the .d.ts, an import of the
// .js would resolve to the .d.ts). A mismatch fails with the member's name.
import type * as Declared from 'wsproxy-client';
import type * as Js from './build/wsproxy-client.js';

/** Members whose name does not start with "_" (the JavaScript's internals). */
type Public<T> = { [K in keyof T as K extends `_${string}` ? never : K]: T[K] };
type IsAny<T> = 0 extends 1 & T ? true : false;
/** Each member: the number of arguments it takes, or "value". */
type Shape<T> = {
  [K in keyof Public<T>]: IsAny<Public<T>[K]> extends true ? 'value'
    : Public<T>[K] extends (...args: infer A) => unknown ? Required<A>['length'] : 'value';
};
/** The members two shapes both have but disagree on. */
type Differ<A, B> = {
  [K in keyof A & keyof B]: Equal<A[K], B[K]> extends true ? never : K;
}[keyof A & keyof B];
/** The number of arguments a constructor takes. */
type Arity<C extends abstract new (...args: never) => unknown> =
  Required<ConstructorParameters<C>>['length'];
type Equal<X, Y> =
  (<T>() => T extends X ? 1 : 2) extends (<T>() => T extends Y ? 1 : 2) ? true : false;

/** Compiles only when T is never: names what one side has and the other lacks. */
declare function none<T extends never>(): void;
/** Compiles only when A and B are the same type. */
declare function same<A, B>(check: Equal<A, B>): void;

// The module's values (types and interfaces exist in the .d.ts alone).
none<Exclude<keyof typeof Declared, keyof typeof Js>>();   // declared, not in the JS
none<Exclude<keyof typeof Js, keyof typeof Declared>>();   // in the JS, not declared
none<Differ<Shape<typeof Declared>, Shape<typeof Js>>>();

// The classes: instance members, static members, constructors.
none<Exclude<keyof Public<Declared.WsproxyClient>, keyof Public<Js.WsproxyClient>>>();
none<Exclude<keyof Public<Js.WsproxyClient>, keyof Public<Declared.WsproxyClient>>>();
none<Differ<Shape<Declared.WsproxyClient>, Shape<Js.WsproxyClient>>>();
same<Arity<typeof Declared.WsproxyClient>, Arity<typeof Js.WsproxyClient>>(true);

none<Exclude<keyof Public<Declared.LiveDocuments>, keyof Public<Js.LiveDocuments>>>();
none<Exclude<keyof Public<Js.LiveDocuments>, keyof Public<Declared.LiveDocuments>>>();
none<Differ<Shape<Declared.LiveDocuments>, Shape<Js.LiveDocuments>>>();
none<Differ<Shape<typeof Declared.LiveDocuments>, Shape<typeof Js.LiveDocuments>>>();
same<Arity<typeof Declared.LiveDocuments>, Arity<typeof Js.LiveDocuments>>(true);

none<Exclude<keyof Public<Declared.RefusedError>, keyof Public<Js.RefusedError>>>();
none<Exclude<keyof Public<Js.RefusedError>, keyof Public<Declared.RefusedError>>>();
same<Arity<typeof Declared.RefusedError>, Arity<typeof Js.RefusedError>>(true);

// The tables: the same keys.
none<Exclude<keyof typeof Declared.DEFAULTS, keyof typeof Js.DEFAULTS>>();
none<Exclude<keyof typeof Js.DEFAULTS, keyof typeof Declared.DEFAULTS>>();
