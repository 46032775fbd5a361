#!/usr/bin/env node
// s3rver on 127.0.0.1 for the local stack's broker (stack/broker.py):
//   node serve.js <data directory> <port> <key file> <bucket>
// The key file holds the stack's access key id and secret (two lines, 0600, made by the
// stack).  s3rver alone answers anonymous requests and knows one hard-wired key, S3RVER:
// here a request must name the stack's key id (the Authorization header's Credential) or
// it is refused with 403, and S3RVER is revoked.  s3rver does not verify a signature-V4
// request's signature, so the random key id is what keeps other local users out (the
// server listens on loopback only, where they cannot read the traffic).
'use strict';

const fs = require('fs');
const S3rver = require('s3rver');
const AWSAccount = require('s3rver/lib/models/account');

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
const credential = `Credential=${keyId}/`;
// First in the chain (Koa composes it when the server starts).
server.middleware.unshift(async (ctx, next) => {
  if (!(ctx.headers.authorization || '').includes(credential)) {
    ctx.status = 403;
    ctx.body = 'AccessDenied';
    return;
  }
  await next();
});
server.run((err, { address, port: bound } = {}) => {
  if (err) {
    console.error(`s3rver: ${err}`);
    process.exit(1);
  }
  console.log(`s3rver serving ${directory} on ${address}:${bound}, bucket ${bucket}`);
});
// Stop accepting, let the requests in progress finish (an object half written would be
// a broken record), then exit; the broker's idle keep-alive connections do not hold it.
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.close(() => process.exit(0));
    server.httpServer.closeIdleConnections();
    setTimeout(() => process.exit(0), 5000).unref();
  });
}
