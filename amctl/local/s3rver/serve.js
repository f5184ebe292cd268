'use strict';
// The local S3 server behind `amctl up --durable-broker`: s3rver (its HTTP API, its files on disk),
// plus what the broker's object store relies on and s3rver 3.7 lacks:
//   - conditional PUTs: `If-None-Match: *` (create only) and `If-Match: <etag>` (replace only that
//     version) answer 412 when they do not hold. Without them a restarted broker writes its first
//     batch over offset 0 of every partition it produces to, losing what was stored there.
//   - one request at a time per object, objects replaced by rename, reads buffered: a reader never
//     sees half an object while it is rewritten.
//   - object metadata and a sorted key index in memory, and listings (ListObjectsV2) answered from
//     them: the broker lists all of a partition's batches on every fetch that finds new records and
//     reads its watermarks on every fetch; s3rver would walk the directory with blocking calls, read
//     three files per object and build the XML with a generic serializer each time.
//
// usage: node serve.js --directory DIR --address HOST --port PORT --bucket NAME
// (NODE_PATH must name the node_modules directory s3rver is installed in)

const crypto = require('crypto');
const fs = require('fs/promises');
const fsSync = require('fs');
const path = require('path');
const { Readable } = require('stream');
const { parseArgs } = require('util');

const S3rver = require('s3rver');
const S3Error = require('s3rver/lib/models/error');
const S3Object = require('s3rver/lib/models/object');

const OBJECT_SUFFIX = '._S3rver_object';
const CACHED_CONTENT_BYTES = 64 * 1024; // small JSON documents (watermarks, metadata) are read on every fetch

const { values: args } = parseArgs({
  options: {
    directory: { type: 'string' },
    address: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string' },
    bucket: { type: 'string' },
  },
});
for (const name of ['directory', 'port', 'bucket']) {
  if (!args[name]) {
    console.error(`missing --${name}`);
    process.exit(2);
  }
}

const server = new S3rver({
  directory: args.directory,
  address: args.address,
  port: Number(args.port),
  silent: true, // a line per request would cost more than the request
  configureBuckets: [{ name: args.bucket, configs: [] }],
});
const store = server.store;
const original = {
  getMetadata: store.getMetadata.bind(store),
  getObject: store.getObject.bind(store),
  deleteObject: store.deleteObject.bind(store),
  copyObject: store.copyObject.bind(store),
};

// -- metadata, small contents and the key order, in memory --------------------------------------

const metadata = new Map(); // "bucket/key" -> what store.getMetadata returns
const listed = new Map(); // "bucket/key" -> its <Contents> element in a listing
const contents = new Map(); // "bucket/key" -> Buffer, for small JSON objects
const sortedKeys = new Map(); // bucket -> keys in lexicographic order

function lowerBound(keys, wanted) {
  let low = 0;
  let high = keys.length;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if (keys[middle] < wanted) low = middle + 1;
    else high = middle;
  }
  return low;
}

function xmlText(text) {
  return String(text).replace(/[&<>"']/g, ch => `&#${ch.charCodeAt(0)};`);
}

function remember(bucket, key, meta, content) {
  const id = `${bucket}/${key}`;
  if (!metadata.has(id)) {
    const keys = sortedKeys.get(bucket) || [];
    keys.splice(lowerBound(keys, key), 0, key);
    sortedKeys.set(bucket, keys);
  }
  metadata.set(id, meta);
  listed.set(id, `<Contents><Key>${xmlText(key)}</Key><LastModified>${new Date(meta['last-modified']).toISOString()}`
    + `</LastModified><ETag>${xmlText(meta.etag)}</ETag><Size>${meta['content-length']}</Size>`
    + '<StorageClass>STANDARD</StorageClass></Contents>');
  if (content && key.endsWith('.json') && content.length <= CACHED_CONTENT_BYTES) contents.set(id, content);
  else contents.delete(id);
}

function forget(bucket, key) {
  const id = `${bucket}/${key}`;
  listed.delete(id);
  if (metadata.delete(id)) {
    const keys = sortedKeys.get(bucket);
    const at = lowerBound(keys, key);
    if (keys[at] === key) keys.splice(at, 1);
  }
  contents.delete(id);
}

async function readOr(file, fallback) {
  try {
    return await fs.readFile(file);
  } catch (err) {
    if (err.code === 'ENOENT') return fallback;
    throw err;
  }
}

// What s3rver would report for an object on disk, tolerating files an older version of this server left
// half-written when it was killed (it wrote them in place): a checksum is recomputed, metadata dropped.
async function storedMetadata(bucket, key, objectPath) {
  const stat = await fs.stat(objectPath);
  let md5 = String(await readOr(`${objectPath}.md5`, ''));
  if (!/^[0-9a-f]{32}$/.test(md5)) {
    md5 = crypto.createHash('md5').update(await fs.readFile(objectPath)).digest('hex');
    writeAtomically(`${objectPath}.md5`, md5);
  }
  let stored = {};
  try {
    stored = JSON.parse(String(await readOr(store.getResourcePath(bucket, key, 'metadata.json'), '{}')));
  } catch {
    stored = {};
  }
  return { ...stored, etag: JSON.stringify(md5), 'last-modified': stat.mtime.toUTCString(), 'content-length': stat.size };
}

async function loadIndex(bucket) {
  const root = path.join(args.directory, bucket);
  sortedKeys.set(bucket, []);
  const pending = [root];
  while (pending.length) {
    const dir = pending.pop();
    let entries;
    try {
      entries = await fs.readdir(dir, { withFileTypes: true });
    } catch (err) {
      if (err.code === 'ENOENT') continue;
      throw err;
    }
    for (const entry of entries) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) pending.push(full);
      else if (entry.name.endsWith(OBJECT_SUFFIX)) {
        const key = path.relative(root, full).split(path.sep).join('/').slice(0, -OBJECT_SUFFIX.length);
        remember(bucket, key, await storedMetadata(bucket, key, full));
      } else if (entry.name.endsWith('.partial')) {
        await fs.rm(full, { force: true }); // a write a crash interrupted: it was never acknowledged
      }
    }
  }
}

store.getMetadata = async function getMetadata(bucket, key) {
  const known = metadata.get(`${bucket}/${key}`);
  if (known) return { ...known };
  const found = await original.getMetadata(bucket, key); // throws ENOENT when there is no such object
  remember(bucket, key, found);
  return { ...found };
};

store.getObject = async function getObject(bucket, key, options) {
  const content = contents.get(`${bucket}/${key}`);
  const ranged = options && (options.start !== undefined || options.end);
  if (!content || ranged) return original.getObject(bucket, key, options);
  return new S3Object(bucket, key, Readable.from([content]), await store.getMetadata(bucket, key));
};

function listKeys(bucket, { delimiter = '', startAfter = '', prefix = '', maxKeys = Infinity }) {
  const keys = sortedKeys.get(bucket) || [];
  const found = [];
  const commonPrefixes = new Set();
  let isTruncated = false;
  let last = '';
  for (let i = lowerBound(keys, startAfter > prefix ? startAfter : prefix); i < keys.length; i++) {
    const key = keys[i];
    if (key <= startAfter) continue;
    if (!key.startsWith(prefix)) break; // sorted: past every key with this prefix
    if (found.length >= maxKeys) {
      isTruncated = true;
      break;
    }
    last = key;
    const at = delimiter ? key.indexOf(delimiter, prefix.length) : -1;
    if (at !== -1) commonPrefixes.add(key.slice(0, at + delimiter.length));
    else found.push(key);
  }
  return { keys: found, commonPrefixes: [...commonPrefixes].sort(), isTruncated, last };
}

store.listObjects = async function listObjects(bucket, options) {
  const { keys, commonPrefixes, isTruncated } = listKeys(bucket, options);
  const objects = keys.map(key => new S3Object(bucket, key, null, metadata.get(`${bucket}/${key}`)));
  return { objects, commonPrefixes, isTruncated };
};

function listObjectsV2(ctx, bucket) {
  const query = ctx.query;
  const maxKeys = query['max-keys'] === undefined ? 1000 : Math.max(0, Math.min(1000, Number(query['max-keys'])));
  const token = query['continuation-token'];
  const startAfter = token ? Buffer.from(token, 'base64url').toString() : query['start-after'] || '';
  const prefix = query.prefix || '';
  const delimiter = query.delimiter || '';
  const result = listKeys(bucket, { prefix, delimiter, startAfter, maxKeys });
  const parts = [
    '<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
    `<Name>${xmlText(bucket)}</Name><Prefix>${xmlText(prefix)}</Prefix><KeyCount>${result.keys.length}</KeyCount>`,
    `<MaxKeys>${maxKeys}</MaxKeys><IsTruncated>${result.isTruncated}</IsTruncated>`,
  ];
  if (delimiter) parts.push(`<Delimiter>${xmlText(delimiter)}</Delimiter>`);
  if (token) parts.push(`<ContinuationToken>${xmlText(token)}</ContinuationToken>`);
  else if (query['start-after']) parts.push(`<StartAfter>${xmlText(startAfter)}</StartAfter>`);
  if (result.isTruncated) {
    parts.push(`<NextContinuationToken>${Buffer.from(result.last).toString('base64url')}</NextContinuationToken>`);
  }
  for (const key of result.keys) parts.push(listed.get(`${bucket}/${key}`));
  for (const common of result.commonPrefixes) parts.push(`<CommonPrefixes><Prefix>${xmlText(common)}</Prefix></CommonPrefixes>`);
  parts.push('</ListBucketResult>');
  ctx.type = 'application/xml';
  ctx.body = parts.join('');
}

// -- objects replaced atomically (multipart uploads end here too) ------------------------------

let temporaries = 0;
const directories = new Set(); // those known to exist: one mkdir each, not one per write

async function readAll(stream) {
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  return Buffer.concat(chunks);
}

// A file is replaced by rename: a crash leaves the old one or the new one, never half of either.
// Synchronous: these are small writes to the page cache, and a busy machine would make each trip
// through libuv's thread pool cost milliseconds (four per write, several writes per produce).
function writeAtomically(file, data) {
  const temporary = `${file}.${process.pid}-${temporaries++}.partial`; // never listed: no object suffix
  fsSync.writeFileSync(temporary, data);
  fsSync.renameSync(temporary, file);
}

function storedPart(meta) {
  const stored = {};
  for (const [name, value] of Object.entries(meta)) {
    if (S3Object.ALLOWED_METADATA.includes(name) || name.startsWith('x-amz-meta-')) stored[name] = value;
  }
  return stored;
}

store.putObject = async function putObject(object) {
  const objectPath = store.getResourcePath(object.bucket, object.key, 'object');
  const dir = path.dirname(objectPath);
  if (!directories.has(dir)) {
    fsSync.mkdirSync(dir, { recursive: true });
    directories.add(dir);
  }
  const content = Buffer.isBuffer(object.content) ? object.content : await readAll(object.content);
  const md5 = crypto.createHash('md5').update(content).digest('hex');
  const stored = storedPart(object.metadata); // what s3rver keeps in the metadata file
  // while running, the index in memory answers every read; the files are for the next start. A crash
  // between these leaves at worst a checksum that is not the content's, which only names a version.
  writeAtomically(store.getResourcePath(object.bucket, object.key, 'object.md5'), md5);
  const known = metadata.get(`${object.bucket}/${object.key}`);
  const described = JSON.stringify(stored);
  if (!known || described !== JSON.stringify(storedPart(known))) {
    writeAtomically(store.getResourcePath(object.bucket, object.key, 'metadata.json'), described);
  }
  writeAtomically(objectPath, content);
  remember(object.bucket, object.key, {
    ...stored,
    etag: JSON.stringify(md5),
    'last-modified': new Date().toUTCString(),
    'content-length': content.length,
  }, content);
  return { size: content.length, md5 };
};

store.deleteObject = async function deleteObject(bucket, key) {
  forget(bucket, key);
  directories.clear(); // s3rver removes the directories a delete leaves empty
  return original.deleteObject(bucket, key);
};

store.copyObject = async function copyObject(srcBucket, srcKey, destBucket, destKey, replacementMetadata) {
  forget(destBucket, destKey);
  const result = await original.copyObject(srcBucket, srcKey, destBucket, destKey, replacementMetadata);
  await store.getMetadata(destBucket, destKey); // index the copy
  return result;
};

// -- one request at a time per object, with conditional writes ---------------------------------

const queues = new Map(); // "bucket/key" -> promise of the request before

async function exclusively(id, work) {
  const before = queues.get(id) || Promise.resolve();
  let release;
  const mine = new Promise(resolve => (release = resolve));
  const tail = before.then(() => mine);
  queues.set(id, tail);
  await before;
  try {
    return await work();
  } finally {
    release();
    if (queues.get(id) === tail) queues.delete(id);
  }
}

function preconditionFailed(condition) {
  return new S3Error('PreconditionFailed', 'At least one of the pre-conditions you specified did not hold', {
    Condition: condition,
  });
}

async function currentEtag(bucket, key) {
  try {
    return (await store.getMetadata(bucket, key)).etag;
  } catch (err) {
    if (err.code === 'ENOENT') return null;
    throw err;
  }
}

async function objectRequests(ctx, next) {
  const listing = /^\/([^/]+)\/?$/.exec(ctx.path);
  if (listing && ctx.method === 'GET' && ctx.query['list-type'] === '2' && sortedKeys.has(listing[1])) {
    return listObjectsV2(ctx, listing[1]);
  }
  const match = /^\/([^/]+)\/(.+)$/.exec(ctx.path);
  if (!match || ctx.querystring) return next(); // buckets, other listings, subresources: as s3rver does them
  const bucket = decodeURIComponent(match[1]);
  const key = decodeURIComponent(match[2]);
  return exclusively(`${bucket}/${key}`, async () => {
    if (ctx.method === 'PUT' && !ctx.get('x-amz-copy-source')) {
      const noneMatch = ctx.get('if-none-match');
      const ifMatch = ctx.get('if-match');
      if (noneMatch || ifMatch) {
        const etag = await currentEtag(bucket, key);
        if (noneMatch === '*' && etag !== null) throw preconditionFailed('If-None-Match');
        if (ifMatch && (etag === null || (ifMatch !== '*' && ifMatch !== etag))) throw preconditionFailed('If-Match');
      }
    }
    await next();
    if (ctx.body && typeof ctx.body.pipe === 'function') {
      ctx.body = await readAll(ctx.body); // read it all while no writer can replace it
    }
  });
}

server.middleware.unshift(objectRequests); // before s3rver's own routes
server.on('error', (err, ctx) => {
  // 404s and 412s are answers, not failures
  if ((err.status || 500) >= 500) console.error(`s3: ${ctx ? `${ctx.method} ${ctx.path}: ` : ''}${err.stack || err}`);
});

loadIndex(args.bucket)
  .then(() => server.run())
  .then(
    address => console.log(`s3 server listening on ${address.address}:${address.port}, bucket "${args.bucket}", `
      + `${metadata.size} objects in ${args.directory}`),
    err => {
      console.error(`s3 server could not start: ${err.stack || err}`);
      process.exit(1);
    },
  );
for (const signal of ['SIGTERM', 'SIGINT']) {
  // no wait for idle keep-alive connections: every stored object is already complete on disk
  process.on(signal, () => process.exit(0));
}
