import { test } from "node:test";
import * as assert from "node:assert/strict";
import { cleanLog, failingLine, LogBuffer } from "../src/log";

test("chunks append in order and the next request starts at X-Next-Offset", () => {
  const b = new LogBuffer();
  assert.equal(b.offset, 0);
  assert.equal(b.apply({ text: "step 1\nst", nextOffset: 9, reset: false }), true);
  assert.equal(b.offset, 9);
  assert.equal(b.text(), "step 1\nst");
  assert.equal(b.apply({ text: "", nextOffset: 9, reset: false }), false, "nothing new, nothing changed");
  b.apply({ text: "ep 2\n", nextOffset: 14, reset: false });
  assert.equal(b.text(), "step 1\nstep 2\n");
  assert.equal(b.offset, 14);
});

test("X-Log-Reset drops what was shown (a retried job's new log)", () => {
  const b = new LogBuffer();
  b.apply({ text: "old attempt\n", nextOffset: 12, reset: false });
  b.apply({ text: "new attempt\n", nextOffset: 12, reset: true });
  assert.equal(b.text(), "new attempt\n");
});

test("an escape sequence split between two chunks is still removed", () => {
  const b = new LogBuffer();
  b.apply({ text: "\x1b[32mok\x1b[0", nextOffset: 10, reset: false });
  b.apply({ text: "m done\n", nextOffset: 17, reset: false });
  assert.equal(b.text(), "ok done\n");
});

test("GitLab's section markers, colours and carriage-return progress are cleaned", () => {
  const raw = "section_start:1700000000:build_script\r\x1b[0K\x1b[32;1m$ make\x1b[0;m\n10%\r50%\r100%\nsection_end:1700000001:build_script\r\x1b[0K\n";
  assert.equal(cleanLog(raw), "$ make\n100%\n\n");
});

test("the failing line: the last file:line message, else the last error line", () => {
  const log = "$ make\nsrc/main.c:10:5: warning: unused\nselftest.c:42: assertion failed: crc == 0x1d0f\nmake: *** [test] Error 1\nERROR: Job failed: exit code 1\n";
  assert.equal(failingLine(log), "selftest.c:42: assertion failed: crc == 0x1d0f");
  assert.equal(failingLine("$ ./run\nPANIC: stack overflow\ndone\nERROR: Job failed: exit code 1\n"), "PANIC: stack overflow");
});
