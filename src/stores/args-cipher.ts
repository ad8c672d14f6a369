import { createCipheriv, createDecipheriv, createHmac, randomBytes } from 'node:crypto';
import { TaskArgsDecryptionError } from '../errors.js';
import type { ArgsCipher } from '../types.js';

/**
 * Sealed args are one string stored where the args array would be:
 *
 *   enc:v1:<key id>:<IV>:<auth tag>:<ciphertext>        (IV, tag and ciphertext in base64)
 *
 * v1 is AES-256-GCM with a random 12-byte IV per seal, a 16-byte tag, and the task id as additional
 * authenticated data: a ciphertext moved onto another record fails authentication like an altered one.
 * The key id (a keyed hash of the key, not the key) says which key sealed a record, so a wrong key is
 * named as such, and a later version can keep old keys for reading while a new one writes (rotation).
 */
const MARKER = 'enc';
const VERSION = 'v1';
const IV_BYTES = 12;
const TAG_BYTES = 16;

export class AesGcmArgsCipher implements ArgsCipher {
  /** 8 hex characters identifying the key in stored records and error messages. */
  readonly keyId: string;
  readonly #key: Buffer;

  constructor(key: Uint8Array) {
    this.#key = Buffer.from(key);
    this.keyId = createHmac('sha256', this.#key).update('koa-taskflow args key id').digest('hex').slice(0, 8);
  }

  seal(taskId: string, argsJson: string): string {
    const iv = randomBytes(IV_BYTES);
    const cipher = createCipheriv('aes-256-gcm', this.#key, iv, { authTagLength: TAG_BYTES });
    cipher.setAAD(aad(taskId));
    const data = Buffer.concat([cipher.update(argsJson, 'utf8'), cipher.final()]);
    const tag = cipher.getAuthTag();
    return `${MARKER}:${VERSION}:${this.keyId}:${iv.toString('base64')}:${tag.toString('base64')}:${data.toString('base64')}`;
  }

  open(taskId: string, sealed: string): string {
    const { keyId, iv, tag, data } = parseSealed(taskId, sealed);
    if (keyId !== this.keyId) {
      throw new TaskArgsDecryptionError(
        taskId,
        `were encrypted with another "encryptionKey" (key id ${keyId}; this TaskManager's key has id ` +
          `${this.keyId}): pass the key they were written with`,
      );
    }
    try {
      if (iv.length !== IV_BYTES || tag.length !== TAG_BYTES)
        throw new Error(`IV of ${iv.length} bytes, tag of ${tag.length} bytes`);
      const decipher = createDecipheriv('aes-256-gcm', this.#key, iv, { authTagLength: TAG_BYTES });
      decipher.setAAD(aad(taskId));
      decipher.setAuthTag(tag);
      return Buffer.concat([decipher.update(data), decipher.final()]).toString('utf8');
    } catch (error) {
      throw new TaskArgsDecryptionError(
        taskId,
        `failed AES-256-GCM authentication with this "encryptionKey" (key id ${keyId}): the stored ` +
          `ciphertext was altered, corrupted or copied from another record, and is not used`,
        { cause: error },
      );
    }
  }
}

/** What reading sealed args does without an `encryptionKey`: fail, saying which key they need. */
export function openWithoutKey(taskId: string, sealed: string): never {
  const { keyId } = parseSealed(taskId, sealed);
  throw new TaskArgsDecryptionError(
    taskId,
    `are stored encrypted (key id ${keyId}) but this TaskManager has no option "encryptionKey": pass the key they were written with`,
  );
}

function parseSealed(taskId: string, sealed: string): { keyId: string; iv: Buffer; tag: Buffer; data: Buffer } {
  const parts = sealed.split(':');
  if (parts.length !== 6 || parts[0] !== MARKER || parts[1] !== VERSION) {
    throw new TaskArgsDecryptionError(
      taskId,
      `are stored in a format this koa-taskflow does not read ` +
        `(${JSON.stringify(parts.slice(0, 2).join(':').slice(0, 24))}), probably by a newer version: ` +
        `upgrade koa-taskflow and keep option "encryptionKey" set`,
    );
  }
  return {
    keyId: parts[2],
    iv: Buffer.from(parts[3], 'base64'),
    tag: Buffer.from(parts[4], 'base64'),
    data: Buffer.from(parts[5], 'base64'),
  };
}

function aad(taskId: string): Buffer {
  return Buffer.from(`koa-taskflow args ${VERSION} ${taskId}`, 'utf8');
}
