// A reader for the part of TOML that cloudci.toml uses and the extension needs: tables
// (`[projects.firmware]`), strings, numbers, booleans and arrays of them. Inline tables and
// anything else are kept as their raw text; a line it cannot read is skipped, never fatal.

/** A value this reader does not interpret (an inline table, a date), as written. */
export class TomlRaw {
  constructor(readonly raw: string) {}
}

export type TomlValue = string | number | boolean | TomlValue[] | TomlRaw;
export type TomlTable = { [key: string]: TomlValue | TomlTable };

export function parseToml(text: string): TomlTable {
  const root: TomlTable = {};
  let table = root;
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    let line = stripComment(lines[i]).trim();
    if (line === "") continue;
    const header = /^\[([^\[\]]+)\]$/.exec(line);
    if (header) {
      table = descend(root, splitKey(header[1]));
      continue;
    }
    const eq = line.indexOf("=");
    if (eq < 0) continue;
    const key = splitKey(line.slice(0, eq));
    let rest = line.slice(eq + 1).trim();
    // A multi-line array: keep reading until the brackets balance.
    while (rest.startsWith("[") && !balanced(rest) && i + 1 < lines.length) {
      rest += " " + stripComment(lines[++i]).trim();
    }
    const value = parseValue(rest);
    if (value === undefined || key.length === 0) continue;
    const parent = descend(table, key.slice(0, -1));
    parent[key[key.length - 1]] = value;
  }
  return root;
}

function descend(table: TomlTable, path: string[]): TomlTable {
  let t = table;
  for (const part of path) {
    const next = t[part];
    if (next === undefined || typeof next !== "object" || Array.isArray(next) || next instanceof TomlRaw) {
      const fresh: TomlTable = {};
      t[part] = fresh;
      t = fresh;
    } else {
      t = next as TomlTable;
    }
  }
  return t;
}

function splitKey(key: string): string[] {
  const parts: string[] = [];
  const re = /\s*(?:"((?:[^"\\]|\\.)*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*(?:\.|$)/y;
  let m: RegExpExecArray | null;
  while (re.lastIndex < key.length && (m = re.exec(key)) !== null) {
    parts.push(m[1] ?? m[2] ?? m[3]);
  }
  return parts;
}

function stripComment(line: string): string {
  let quote: string | null = null;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (quote) {
      if (c === "\\" && quote === '"') i++;
      else if (c === quote) quote = null;
    } else if (c === '"' || c === "'") quote = c;
    else if (c === "#") return line.slice(0, i);
  }
  return line;
}

function balanced(text: string): boolean {
  let depth = 0;
  let quote: string | null = null;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quote) {
      if (c === "\\" && quote === '"') i++;
      else if (c === quote) quote = null;
    } else if (c === '"' || c === "'") quote = c;
    else if (c === "[") depth++;
    else if (c === "]") depth--;
  }
  return depth === 0;
}

function parseValue(text: string): TomlValue | undefined {
  const v = text.trim();
  if (v.startsWith('"')) return unescape(v.slice(1, v.lastIndexOf('"')));
  if (v.startsWith("'")) return v.slice(1, v.lastIndexOf("'"));
  if (v === "true" || v === "false") return v === "true";
  if (/^[+-]?\d[\d_]*(\.\d+)?$/.test(v)) return Number(v.replace(/_/g, ""));
  if (v.startsWith("[")) return splitArray(v.slice(1, v.lastIndexOf("]"))).map((x) => parseValue(x) ?? new TomlRaw(x));
  if (v === "") return undefined;
  return new TomlRaw(v);
}

function splitArray(inner: string): string[] {
  const items: string[] = [];
  let depth = 0;
  let quote: string | null = null;
  let start = 0;
  for (let i = 0; i < inner.length; i++) {
    const c = inner[i];
    if (quote) {
      if (c === "\\" && quote === '"') i++;
      else if (c === quote) quote = null;
    } else if (c === '"' || c === "'") quote = c;
    else if (c === "[" || c === "{") depth++;
    else if (c === "]" || c === "}") depth--;
    else if (c === "," && depth === 0) {
      items.push(inner.slice(start, i));
      start = i + 1;
    }
  }
  items.push(inner.slice(start));
  return items.map((s) => s.trim()).filter((s) => s !== "");
}

function unescape(s: string): string {
  return s.replace(/\\(u[0-9a-fA-F]{4}|.)/g, (_, e: string) => {
    if (e.length === 5) return String.fromCharCode(parseInt(e.slice(1), 16));
    return ({ n: "\n", t: "\t", r: "\r", '"': '"', "\\": "\\" } as Record<string, string>)[e] ?? e;
  });
}

/** `table[a][b]...` as a string, if it is one. */
export function tomlString(table: TomlTable, ...path: string[]): string | undefined {
  const v = walk(table, path);
  return typeof v === "string" ? v : undefined;
}

/** `table[a][b]...` as a sub-table, if it is one. */
export function tomlTable(table: TomlTable, ...path: string[]): TomlTable | undefined {
  const v = walk(table, path);
  return v !== undefined && typeof v === "object" && !Array.isArray(v) && !(v instanceof TomlRaw) ? (v as TomlTable) : undefined;
}

/** `table[a][b]...` as an array of strings (other items dropped). */
export function tomlStrings(table: TomlTable, ...path: string[]): string[] | undefined {
  const v = walk(table, path);
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === "string") : undefined;
}

function walk(table: TomlTable, path: string[]): TomlValue | TomlTable | undefined {
  let v: TomlValue | TomlTable | undefined = table;
  for (const p of path) {
    if (v === undefined || typeof v !== "object" || Array.isArray(v) || v instanceof TomlRaw) return undefined;
    v = (v as TomlTable)[p];
  }
  return v;
}
