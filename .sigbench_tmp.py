import time, sys
sys.argv=["x"]
from benchmarks.app_overhead import presigned_scopes
from gateway.api.s3.request import S3Request
from gateway.api.s3 import sigv4
s = presigned_scopes("GET", ["4096/obj-00001"])[0]
r = S3Request.from_scope(s, None, "id")
a = sigv4.Authenticator({"bench-access-key": "bench-secret-key-0123456789"})
def t(f, n=50000):
    best = 1e9
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n): f()
        best = min(best, (time.perf_counter()-t0)/n*1e6)
    return best
print("authenticate", t(lambda: a.authenticate(r.method, r.raw_path, r.query_string, r.headers)))
print("from_scope", t(lambda: S3Request.from_scope(s, None, "id")))
from gateway.api.s3.sigv4 import _split_query, canonical_query, _signed_names, _canonical_forms
import hashlib, hmac
pairs = _split_query(r.query_string)
print(r.query_string)
print("split", t(lambda: _split_query(r.query_string)))
print("names", t(lambda: {n for n, _ in pairs}))
print("canonical_query", t(lambda: canonical_query(pairs, "X-Amz-Signature")))
print("signed_names", t(lambda: _signed_names("host", r.headers, ValueError)))
print("query_auth", t(lambda: a._query_auth(r.method, r.raw_path, pairs, r.headers)))
params = {n: v for n, v in pairs}
key = b"k"*32
print("verify", t(lambda: a._verify("GET", r.raw_path, pairs, "X-Amz-Signature", r.headers, "host", ["host"], "UNSIGNED-PAYLOAD", "20261125T185500Z", "20261125/us-east-1/s3/aws4_request", key, "x"*64) if False else None))
data = b"x"*300
print("sha", t(lambda: hashlib.sha256(data).hexdigest()))
print("hmac", t(lambda: hmac.digest(key, data, "sha256").hex()))
