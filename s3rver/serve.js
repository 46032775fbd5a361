#!/usr/bin/env node
// s3rver on 127.0.0.1 for the local stack's broker (stack/broker.py):
//   node serve.js <data directory> <port> <key file> <bucket>
//
// What tansu's S3 engine needs that s3rver 3.7 lacks, added here:
//
// * Conditional writes.  tansu creates record batches with `If-None-Match: *` and updates
//   its watermarks and metadata with `If-Match: <etag>` (optimistic concurrency: a write
//   that lost a race gets 412 and is redone on fresh state).  s3rver ignores both headers,
//   so two concurrent produce requests could take the same offset and the second batch
//   would overwrite the first, acknowledged, one; the producer's sequence state went out
//   of order the same way (OutOfOrderSequenceNumber).  Here every PUT or DELETE of one key
//   runs alone, after its condition is checked as S3 does (412, or 404 for If-Match on a
//   missing key).
// * No hole in a listing.  tansu takes a batch's offsets in the partition's watermark
//   before it writes the batch; a listing in between ends before that batch ("offsets
//   being written" below), or a fetch would skip its records.
// * Atomic objects.  s3rver rewrites an object's file in place and answers before the
//   file is written: a reader could see half a watermark, and a crash right after the
//   answer leave half a batch.  Here an object is written to a temporary file and renamed
//   over the old one once complete, and the answer comes after.  No fsync: like a
//   single Kafka broker, what was acknowledged survives a crash of any process, not a
//   power cut (docs/RELIABILITY.md).
// * Listing cost.  tansu lists a partition's batches at every fetch, and stops listing at
//   the fetch's max wait (stack/broker.py).  s3rver walks the whole directory for every
//   page of 1,000 keys and stats every file, then reads two files per object for its
//   checksum and metadata: a full listing took time in the square of the partition's
//   size.  Here a listing without a delimiter pages through a sorted index of the keys
//   under its prefix, made by one walk the first time (entry types from the directory
//   listing, no stat) and kept up to date by every write that succeeds; each object's
//   metadata is kept in memory after its first read, as long as no write of it happened
//   meanwhile.
// * Deletes without a directory scan.  s3rver reads an object's whole directory after
//   each delete (to remove it when empty), synchronously; the broker's retention deletes
//   a lagging partition's batches by the thousand, so every delete stalled all other
//   requests.  Here a delete only unlinks the object's files ("deletes" below).
// * Access.  s3rver answers anonymous requests and knows one hard-wired key, S3RVER.
//   Here a request must name the stack's key id (the key file: id and secret on two
//   lines, 0600, made by the stack) or it gets 403.  s3rver does not check a signature-V4
//   request's signature, so the random key id is what keeps other local users out (it
//   travels on loopback only, where they cannot read it).
// * A full disk.  s3rver answers a write that finds no room (ENOSPC) with a bare 500 and,
//   silent, logs nothing, and its partial file stays.  Here such a write leaves nothing
//   behind (above: every file to a temporary, removed on failure), is answered 507
//   InsufficientStorage with the reason, and is logged at ERROR naming the full disk and
//   the directory (at most once per FULL_LOG_EVERY_MS, with the count refused meanwhile);
//   the first write accepted after that says so.  A 5xx, so tansu's S3 client retries the
//   write with backoff for a while before it fails the request (docs/RELIABILITY.md,
//   "The local broker's storage").
// * Listings longer than a page.  s3rver makes ListObjectsV2's continuation token with
//   DES, which the OpenSSL 3 under Node 17+ refuses ("digital envelope routines::
//   unsupported"), so every listing of more than 1,000 keys (max-keys) failed with 500.
//   tansu lists a partition's record batches at each fetch: once a partition held 1,000
//   batches the broker could no longer serve it.  Here the token is the same bytes
//   without the cipher (it only has to come back unchanged; S3's tokens are opaque).
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const fsp = require('fs/promises');
const path = require('path');
const { pick, pickBy } = require('lodash');

// Before s3rver's bucket controller is loaded: its 'des' continuation token, unenciphered.
const unciphered = () => ({ update: (data, encoding) => Buffer.from(data, encoding), final: () => Buffer.alloc(0) });
for (const [name, original] of [['createCipheriv', crypto.createCipheriv], ['createDecipheriv', crypto.createDecipheriv]]) {
  crypto[name] = (algorithm, ...rest) => (algorithm === 'des' ? unciphered() : original(algorithm, ...rest));
}
// Before s3rver's store takes it (it destructures walk when loaded): the entry types come
// with the directory listing, no stat per file.
const utils = require('s3rver/lib/utils');

utils.walk = function* walk(dir, recurseFilter) {
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const filePath = path.posix.join(dir, entry.name);
    if (!entry.isDirectory()) {
      yield filePath;
    } else if (!recurseFilter || recurseFilter(filePath)) {
      yield* walk(filePath, recurseFilter);
    }
  }
};
const S3rver = require('s3rver');
const AWSAccount = require('s3rver/lib/models/account');
const FilesystemStore = require('s3rver/lib/stores/filesystem');
const S3Object = require('s3rver/lib/models/object');

const [directory, port, keyFile, bucket] = process.argv.slice(2);
if (!bucket) {
  console.error('usage: serve.js <data directory> <port> <key file> <bucket>');
  process.exit(2);
}
const [keyId, secret] = fs.readFileSync(keyFile, 'utf8').trim().split('\n');
AWSAccount.DUMMY_ACCOUNT.revokeAccessKey('S3RVER');
AWSAccount.DUMMY_ACCOUNT.createKeyPair(keyId, secret);

fs.mkdirSync(directory, { recursive: true });
const server = new S3rver({
  directory,
  address: '127.0.0.1',
  port: Number(port),
  silent: true,
  configureBuckets: [{ name: bucket, configs: [] }],
});

// ---------------------------------------------------------------- offsets being written
// tansu's produce takes a batch's offsets by writing the partition's watermark.json (high
// from h to h + the batch's records) and only then writes the batch object at h.  In
// between, a fetch listing the partition could see a later batch (a produce that took its
// offsets after this one and finished first) but not batch h: tansu answers with the
// batches it listed, so the consumer's position moves past h's records, which that group
// then never reads (the soak found it: four images whose results were stored and whose
// own records the DB writer never got).  Here a listing of a partition's records ends
// before the lowest batch whose offsets were taken and not written yet, so a fetch sees
// the batches in offset order with no hole, as Kafka serves them.  A batch that is never
// written (the broker killed between its two writes, or its write refused) holds the
// listing back PENDING_MAX_MS at most.
const PENDING_MAX_MS = 10000;
const WATERMARK = /^(.*\/partitions\/\d{10}\/)watermark\.json$/;
const BATCH = /^(.*\/partitions\/\d{10}\/records\/)(\d{20})\.batch$/;
const pending = new Map();  // bucket + records prefix -> Map(base offset -> taken at, ms)

function highOf(buffer) {
  try {
    const { high } = JSON.parse(buffer.toString());
    return Number.isSafeInteger(high) ? high : null;
  } catch {
    return null;
  }
}

function offsetsTaken(objectPath, key, content) {
  // The watermark before this write (tansu starts a partition at 0) and after it.
  let before = 0;
  try {
    before = highOf(fs.readFileSync(objectPath)) ?? 0;
  } catch (err) {
    if (err.code !== 'ENOENT') throw err;
  }
  const after = highOf(content);
  return after !== null && after > before ? { records: `${WATERMARK.exec(key)[1]}records/`, base: before } : null;
}

const pendingId = (bucket, records) => `${bucket}\n${records}`;

function batchTaken(bucket, records, base) {
  const id = pendingId(bucket, records);
  if (!pending.has(id)) pending.set(id, new Map());
  pending.get(id).set(base, Date.now());
}

function batchWritten(bucket, key) {
  const m = BATCH.exec(key);
  const taken = m && pending.get(pendingId(bucket, m[1]));
  if (taken) taken.delete(Number(m[2]));
}

function lowestTaken(bucket, prefix) {  // the lowest base offset taken and not written, or null
  const id = pendingId(bucket, prefix);
  const taken = pending.get(id);
  if (!taken) return null;
  const now = Date.now();
  let lowest = null;
  for (const [base, at] of taken) {
    if (now - at > PENDING_MAX_MS) taken.delete(base);
    else if (lowest === null || base < lowest) lowest = base;
  }
  if (!taken.size) pending.delete(id);
  return lowest;
}

// ---------------------------------------------------------------- atomic objects
let temporaries = 0;
const temporary = file => `${file}.${process.pid}-${temporaries++}.tmp`;

const store = server.store;

// ---------------------------------------------------------------- metadata in memory
// An entry is kept only if no write of its object was in progress or happened while it
// was read, so a stale ETag is never served.  ``writing`` and ``reading`` hold only the
// objects being written or read at the moment, so they do not grow with the objects ever
// written (the broker writes one per batch; the retention deletes them).
const known = new Map();
const writing = new Map();  // id -> writes in progress
const reading = new Map();  // id -> the reads in progress, each { stale }
const readMetadata = store.getMetadata.bind(store);
store.getMetadata = async function getMetadata(name, key) {
  const id = `${name}/${key}`;
  const hit = known.get(id);
  if (hit) return { ...hit };
  const read = { stale: writing.has(id) };
  let reads = reading.get(id);
  if (!reads) reading.set(id, (reads = new Set()));
  reads.add(read);
  try {
    const metadata = await readMetadata(name, key);
    if (!read.stale && !writing.has(id)) {
      if (known.size >= 200000) known.clear();
      known.set(id, metadata);
    }
    return { ...metadata };
  } finally {
    reads.delete(read);
    if (reads.size === 0 && reading.get(id) === reads) reading.delete(id);
  }
};
function touched(id) {
  known.delete(id);
  for (const read of reading.get(id) || []) read.stale = true;
}
function writeBegins(name, key) {
  const id = `${name}/${key}`;
  writing.set(id, (writing.get(id) || 0) + 1);
  touched(id);
}
function writeEnds(name, key) {
  const id = `${name}/${key}`;
  const left = (writing.get(id) || 1) - 1;
  if (left) writing.set(id, left);
  else writing.delete(id);
  touched(id);
}
// ---------------------------------------------------------------- deletes
// s3rver's delete, after unlinking an object's three files, reads its directory
// synchronously to remove it when empty.  The retention deletes a partition's old
// batches by the thousand from a directory holding three files per batch, so each delete
// stalled every other request for a full read of that directory (a profile during a
// backlog's drain: 22 % of s3rver's time, in readdirSync), and the more a consumer lagged
// the slower its fetches got.  S3 has no directories and an empty one lists nothing, so
// here a delete only unlinks the files.
store.deleteObject = async function deleteObject(bucket, key) {
  await Promise.all(['object', 'object.md5', 'metadata.json'].map(kind =>
    fsp.unlink(this.getResourcePath(bucket, key, kind)).catch(err => {
      if (err.code !== 'ENOENT') throw err;
    })));
};
for (const method of ['deleteObject', 'copyObject', 'putObjectMultipart']) {
  const original = store[method].bind(store);
  store[method] = async (...args) => {
    // copyObject(srcBucket, srcKey, destBucket, destKey, ...); the others (bucket, key or upload)
    const [name, key] = method === 'copyObject' ? [args[2], args[3]] : [args[0], args[1]];
    writeBegins(name, key);
    try {
      const result = await original(...args);
      if (method === 'putObjectMultipart') listings.clear();
      else indexed(name, key, method === 'copyObject');
      return result;
    } finally {
      writeEnds(name, key);
      if (method === 'putObjectMultipart') known.clear();
    }
  };
}
store.putObject = async function putObject(object) {
  writeBegins(object.bucket, object.key);
  try {
    const result = await putWhole(this, object);
    indexed(object.bucket, object.key, true);
    batchWritten(object.bucket, object.key);
    return result;
  } finally {
    writeEnds(object.bucket, object.key);
  }
};

// ---------------------------------------------------------------- listings from an index
// (bucket, prefix) -> the sorted keys under the prefix.  Made in one synchronous walk, so
// no write completes between the walk and the index being kept; after that each write
// that succeeded adds or removes its key (the object file's rename is the write's commit).
const listings = new Map();
const OBJECT_SUFFIX = '._S3rver_object';

function firstAfter(keys, key) {  // index of the first key > key
  let lo = 0;
  let hi = keys.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (keys[mid] <= key) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function keysUnder(name, prefix) {
  const id = `${name}\n${prefix}`;
  let keys = listings.get(id);
  if (keys) return keys;
  const bucketPath = store.getBucketPath(name);
  const prefixPath = [bucketPath, FilesystemStore.encodeKeyPath(prefix)].join('/');
  keys = [];
  for (const file of utils.walk(bucketPath, dir => dir.startsWith(prefixPath) || prefixPath.startsWith(dir))) {
    if (!file.endsWith(OBJECT_SUFFIX)) continue;
    const key = FilesystemStore.decodeKeyPath(file.slice(bucketPath.length + 1, -OBJECT_SUFFIX.length));
    if (key.startsWith(prefix)) keys.push(key);
  }
  keys.sort();
  if (listings.size >= 10000) listings.clear();
  listings.set(id, keys);
  return keys;
}

function indexed(name, key, present) {
  for (const [id, keys] of listings) {
    const [bucketName, prefix] = id.split('\n');
    if (bucketName !== name || !key.startsWith(prefix)) continue;
    const at = firstAfter(keys, key);
    const there = at > 0 && keys[at - 1] === key;
    if (present && !there) keys.splice(at, 0, key);
    else if (!present && there) keys.splice(at - 1, 1);
  }
}

const listAll = store.listObjects.bind(store);
store.listObjects = async function listObjects(name, options) {
  const { delimiter = '', startAfter = '', prefix = '', maxKeys = Infinity } = options;
  if (delimiter) return listAll(name, options);
  let keys = keysUnder(name, prefix);
  const lowest = lowestTaken(name, prefix);
  if (lowest !== null) keys = keys.slice(0, firstAfter(keys, `${prefix}${String(lowest).padStart(20, '0')}`));
  const from = firstAfter(keys, startAfter);
  const page = keys.slice(from, from + maxKeys);
  const metadata = await Promise.all(page.map(key => this.getMetadata(name, key).catch(err => {
    if (err.code === 'ENOENT') return undefined;  // deleted meanwhile
    throw err;
  })));
  return {
    objects: page.map((key, i) => metadata[i] && new S3Object(name, key, null, metadata[i])).filter(Boolean),
    commonPrefixes: [],
    isTruncated: from + page.length < keys.length,
  };
};

async function putWhole(self, object) {
  const objectPath = self.getResourcePath(object.bucket, object.key, 'object');
  const metadataPath = self.getResourcePath(object.bucket, object.key, 'metadata.json');
  await fsp.mkdir(path.dirname(objectPath), { recursive: true });
  // Every file of the object is written whole to a temporary first; a write that fails
  // (a full disk: ENOSPC) removes them all, so it leaves nothing behind, neither a partial
  // file nor a checksum or metadata of an object that was never written.
  const made = [];
  try {
    const tmp = temporary(objectPath);
    made.push(tmp);
    const hash = crypto.createHash('md5');
    let size = 0;
    const kept = WATERMARK.test(object.key) ? [] : null;  // a watermark's offsets: read below
    const file = await fsp.open(tmp, 'w');
    try {
      const chunks = Buffer.isBuffer(object.content) ? [object.content] : object.content;
      for await (const chunk of chunks) {
        hash.update(chunk);
        size += chunk.length;
        await file.write(chunk);
        if (kept) kept.push(chunk);
      }
    } finally {
      await file.close();
    }
    const md5 = hash.digest('hex');
    const metadata = {  // what s3rver's putMetadata keeps
      ...pick(object.metadata, S3Object.ALLOWED_METADATA),
      ...pickBy(object.metadata, (value, name) => name.startsWith('x-amz-meta-')),
    };
    const md5Tmp = temporary(`${objectPath}.md5`);
    made.push(md5Tmp);
    await fsp.writeFile(md5Tmp, md5);
    const metadataTmp = temporary(metadataPath);
    made.push(metadataTmp);
    await fsp.writeFile(metadataTmp, JSON.stringify(metadata, null, 2));
    // The checksum (the ETag) and the metadata first, the object last: until the rename the
    // old object stays whole, and an ETag that does not match it only makes a conditional
    // write fail, which tansu redoes after reading the object again.  A rename takes no room.
    await fsp.rename(md5Tmp, `${objectPath}.md5`);
    await fsp.rename(metadataTmp, metadataPath);
    const taken = kept && offsetsTaken(objectPath, object.key, Buffer.concat(kept));
    await fsp.rename(tmp, objectPath);
    if (taken) batchTaken(object.bucket, taken.records, taken.base);
    return { size, md5 };
  } catch (err) {
    await Promise.all(made.map(f => fsp.rm(f, { force: true })));
    throw err;
  }
}

// ---------------------------------------------------------------- conditional writes
const queues = new Map();

async function alone(key, work) {
  const before = queues.get(key) || Promise.resolve();
  let done;
  const mine = before.then(() => new Promise(resolve => (done = resolve)));
  queues.set(key, mine);
  await before;
  try {
    return await work();
  } finally {
    done();
    if (queues.get(key) === mine) queues.delete(key);
  }
}

const tags = header => header.split(',').map(t => t.trim().replace(/^W\//, '').replace(/"/g, ''));

async function currentTag(name, key) {
  try {
    return (await store.getMetadata(name, key)).etag.replace(/"/g, '');
  } catch (err) {
    if (err.code === 'ENOENT') return null;
    throw err;
  }
}

function refuse(ctx, status, code, message) {
  ctx.status = status;
  ctx.type = 'application/xml';
  ctx.body = `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${message}</Message></Error>`;
}

async function conditional(ctx, next) {
  const [name, ...parts] = ctx.path.split('/').slice(1);
  const key = decodeURIComponent(parts.join('/'));
  if (!['PUT', 'DELETE'].includes(ctx.method) || !key) return next();
  return alone(`${name}/${key}`, async () => {
    const ifMatch = ctx.get('if-match');
    const ifNoneMatch = ctx.get('if-none-match');
    if (ifMatch || ifNoneMatch) {
      const tag = await currentTag(name, key);
      if (ifMatch && tag === null) {
        return refuse(ctx, 404, 'NoSuchKey', 'The specified key does not exist.');
      }
      const matchFails = ifMatch && !(ifMatch.trim() === '*' || tags(ifMatch).includes(tag));
      const noneMatchFails = ifNoneMatch && tag !== null && (ifNoneMatch.trim() === '*' || tags(ifNoneMatch).includes(tag));
      if (matchFails || noneMatchFails) {
        return refuse(ctx, 412, 'PreconditionFailed', 'At least one of the pre-conditions you specified did not hold');
      }
    }
    return next();
  });
}

// ---------------------------------------------------------------- a full disk
const NO_ROOM = new Set(['ENOSPC', 'EDQUOT']);
const FULL_LOG_EVERY_MS = 5000;
const WRITES = new Set(['PUT', 'POST', 'DELETE']);
let refused = 0;  // writes refused since the disk was last seen with room
let refusedSinceLog = 0;
let lastFullLog = 0;

const stamp = () => new Date().toISOString();

async function diskFull(ctx, next) {
  try {
    await next();
  } catch (err) {
    if (!NO_ROOM.has(err.code)) throw err;
    refused += 1;
    refusedSinceLog += 1;
    if (Date.now() - lastFullLog >= FULL_LOG_EVERY_MS) {
      console.error(`${stamp()} ERROR s3rver: disk full: no space left on device under ${directory} ` +
        `(${err.code} on ${ctx.method} ${ctx.path}); ${refusedSinceLog} write(s) refused with 507 ` +
        `InsufficientStorage since the last line; stored objects are kept, writes are refused until there is room`);
      lastFullLog = Date.now();
      refusedSinceLog = 0;
    }
    return refuse(ctx, 507, 'InsufficientStorage',
      `No space left on device under the server's data directory (${err.code}); nothing was written`);
  }
  if (refused && WRITES.has(ctx.method) && ctx.status < 300) {
    console.error(`${stamp()} INFO s3rver: the disk under ${directory} has room again: writes accepted ` +
      `(${refused} refused while it was full)`);
    refused = refusedSinceLog = lastFullLog = 0;
  }
}

// ---------------------------------------------------------------- access
const credential = `Credential=${keyId}/`;

async function authorized(ctx, next) {
  if (!(ctx.headers.authorization || '').includes(credential)) {
    return refuse(ctx, 403, 'AccessDenied', 'Access Denied');
  }
  return next();
}

// First in the chain, in this order (Koa composes the chain when the server starts).
server.middleware.unshift(diskFull, authorized, conditional);

server.run((err, { address, port: bound } = {}) => {
  if (err) {
    console.error(`s3rver: ${err}`);
    process.exit(1);
  }
  console.log(`s3rver serving ${directory} on ${address}:${bound}, bucket ${bucket}`);
});
// Stop accepting, let the requests in progress finish, then exit; the broker's idle
// keep-alive connections do not hold it.
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.close(() => process.exit(0));
    server.httpServer.closeIdleConnections();
    setTimeout(() => process.exit(0), 5000).unref();
  });
}
