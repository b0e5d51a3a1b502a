// A job log as the editor tab shows it: chunks from GET /v1/builds/{id}/log appended in order,
// following X-Next-Offset, with GitLab's colour codes and section markers removed. Pure.

export interface LogChunk {
  text: string;
  nextOffset: number;
  /** X-Log-Reset: the log started again (a retried job): drop what was shown. */
  reset: boolean;
}

export class LogBuffer {
  /** Where the next request starts (the daemon's X-Next-Offset). */
  offset = 0;
  private done = "";
  private tail = "";

  apply(chunk: LogChunk): boolean {
    if (chunk.reset) {
      this.done = "";
      this.tail = "";
    }
    const before = this.offset;
    this.offset = chunk.nextOffset;
    if (chunk.text === "") return chunk.reset || before !== this.offset;
    const raw = this.tail + chunk.text;
    const cut = raw.lastIndexOf("\n");
    // Clean complete lines only: an escape sequence may be split between two chunks.
    this.done += cleanLog(raw.slice(0, cut + 1));
    this.tail = raw.slice(cut + 1);
    return true;
  }

  text(): string {
    return this.done + cleanLog(this.tail);
  }
}

const SECTION = /section_(?:start|end):\d+:[^\r\n]*?\r?\x1b\[0K/g;
const CSI = /\x1b\[[0-9;?]*[A-Za-z]/g;

/** GitLab's trace without ANSI escapes or section markers; a `\r` overwrites its line. */
export function cleanLog(raw: string): string {
  return raw
    .replace(SECTION, "")
    .replace(CSI, "")
    .split("\n")
    .map((line) => {
      const l = line.replace(/\r+$/, "");
      const i = l.lastIndexOf("\r");
      return i >= 0 ? l.slice(i + 1) : l;
    })
    .join("\n");
}

/** The line that closes a finished job's tab. */
export function footer(job: string, status: string): string {
  return `\n── ${job}: ${status} ──\n`;
}

/**
 * The line that says why a job failed: the last compiler-style `file:line:` message, else the
 * last line mentioning an error or failure before GitLab's own closing lines.
 */
export function failingLine(log: string): string | undefined {
  const lines = cleanLog(log)
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !/^(ERROR: Job failed|Cleaning up|Uploading artifacts)/.test(l));
  const located = lines.filter((l) => /^[^\s:]+:\d+(?::\d+)?:/.test(l));
  if (located.length > 0) return located[located.length - 1];
  const said = lines.filter((l) => /error|fail|assert|panic/i.test(l));
  return said[said.length - 1] ?? lines[lines.length - 1];
}
