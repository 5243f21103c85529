import hashlib, hmac, time, re
def t(f, n=100000):
    best = 1e9
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n): f()
        best = min(best, (time.perf_counter()-t0)/n*1e6)
    return best
key = b"k"*32
data = b"x"*150
inner = hashlib.sha256(bytes(b ^ 0x36 for b in key.ljust(64, b"\0")))
outer = hashlib.sha256(bytes(b ^ 0x5C for b in key.ljust(64, b"\0")))
def mine():
    i = inner.copy(); i.update(data); o = outer.copy(); o.update(i.digest()); return o.hexdigest()
assert mine() == hmac.new(key, data, hashlib.sha256).hexdigest()
print("digest", t(lambda: hmac.digest(key, data, "sha256").hex()))
print("new", t(lambda: hmac.new(key, data, hashlib.sha256).hexdigest()))
print("mine", t(mine))
print("sha256()", t(lambda: hashlib.sha256(data).hexdigest()))
from hashlib import sha256
print("sha256 direct", t(lambda: sha256(data).hexdigest()))
s = "bench-access-key%2F20261125%2Fus-east-1%2Fs3%2Faws4_request"
U = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
R = re.compile(r"[A-Za-z0-9_.~-]*")
print("issuperset", t(lambda: U.issuperset(s)))
print("re", t(lambda: R.fullmatch(s)))
d = {s: 1}
print("dict", t(lambda: d.get(s)))
s2 = s[:-1] + "t"
print("dict fresh", t(lambda: d.get(s2[:-1]+"t")))
print("slice cost", t(lambda: s2[:-1]+"t"))
