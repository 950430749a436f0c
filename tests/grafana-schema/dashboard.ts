// The type each file in dashboards/ must have: Grafana's published dashboard model
// (@grafana/schema's `Dashboard`), with its string enums (ThresholdsMode, MappingType, ...)
// as the literal strings a JSON file holds. tests/shipped.rs writes each dashboard as
// `const d: DashboardJson = <the file>` and runs tsc: a missing required field, a wrong type or
// an unknown property (excess property check) fails.
import type { Dashboard } from "@grafana/schema";

type Relax<T> = T extends string
  ? string extends T
    ? T
    : `${T}`
  : T extends readonly (infer U)[]
    ? Relax<U>[]
    : T extends object
      ? { [K in keyof T]: Relax<T[K]> }
      : T;

export type DashboardJson = Relax<Dashboard>;
