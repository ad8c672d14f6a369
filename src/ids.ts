import { randomFillSync } from 'node:crypto';

// Random bytes for 256 ids at a time, as node:crypto's randomUUID() pools them.
const pool = Buffer.allocUnsafe(16 * 256);
let used = pool.length;
const text = Buffer.alloc(36, '-');
const HEX = Buffer.from('0123456789abcdef', 'latin1');
/** Where each of the 16 bytes' two hex digits go in `xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`. */
const AT = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];

/**
 * A random (version 4) UUID, like `crypto.randomUUID()`, made as one flat string. randomUUID() joins its 20
 * pieces with `+`, and V8 keeps such a string as a tree of about 14 cons strings until something flattens
 * it: a task id is kept as long as its record (10 000 records by default), so the tree costs ~450 bytes
 * per record where the flat string takes 56, and the garbage collector copies every node of it.
 */
export function newTaskId(): string {
  if (used === pool.length) {
    randomFillSync(pool);
    used = 0;
  }
  pool[used + 6] = (pool[used + 6] & 0x0f) | 0x40;
  pool[used + 8] = (pool[used + 8] & 0x3f) | 0x80;
  for (let i = 0; i < 16; i++) {
    const byte = pool[used + i];
    text[AT[i]] = HEX[byte >> 4];
    text[AT[i] + 1] = HEX[byte & 15];
  }
  used += 16;
  return text.toString('latin1');
}
