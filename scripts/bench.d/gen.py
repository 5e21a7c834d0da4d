#!/usr/bin/env python3
"""Config generator for scripts/bench. Deterministic (seed 42), so every proxy gets the same data.

  gen.py plain    OUT ORIGIN_PORT             OUT/plain.yaml: one route `/` to the origin
  gen.py scale    OUT ORIGIN_PORT [N] [M]     OUT/routes.yaml (N=10000 routes /svc<i>/, one service),
                                              OUT/cidrs.yaml (route `/` + ip-restriction allow-list of
                                              M=100000 random v4 CIDRs and 127.0.0.0/8), and nginx's
                                              equivalents: OUT/nginx-routes.inc (N locations),
                                              OUT/nginx-geo.inc (the same CIDRs for `geo`)
  gen.py supabase KONG_YML OUT ORIGIN_PORT    OUT/supabase.yml: Supabase's kong.yml with every upstream
                                              host:port pointed at the origin (routes and plugins kept
                                              as they are), OUT/supabase.env: the variables it needs
"""
import base64
import hashlib
import hmac
import json
import os
import random
import re
import sys


def plain(out, origin):
    with open(os.path.join(out, "plain.yaml"), "w") as f:
        f.write(
            '_format_version: "3.0"\n'
            "# bench: plain route\n"
            "services:\n"
            "  - name: origin\n"
            f"    url: http://127.0.0.1:{origin}\n"
            "    routes:\n"
            "      - name: plain\n"
            "        paths: [/]\n"
        )


def cidr_list(m):
    rnd = random.Random(42)
    cidrs, seen = [], set()
    while len(cidrs) < m:
        plen = rnd.choice([16, 20, 24, 24, 28, 32, 32])
        a = rnd.randrange(1, 224)
        if a in (10, 127, 172, 192, 100, 169):
            continue
        ip = (a << 24) | rnd.getrandbits(24)
        ip &= (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF
        c = f"{ip >> 24}.{(ip >> 16) & 255}.{(ip >> 8) & 255}.{ip & 255}/{plen}"
        if c in seen:
            continue
        seen.add(c)
        cidrs.append(c)
    cidrs.append("127.0.0.0/8")  # the load generator's address must be allowed
    return cidrs


def scale(out, origin, n=10000, m=100000):
    n, m = int(n), int(m)
    with open(os.path.join(out, "routes.yaml"), "w") as f:
        f.write('_format_version: "3.0"\nservices:\n  - name: origin\n')
        f.write(f"    url: http://127.0.0.1:{origin}\n    routes:\n")
        for i in range(n):
            f.write(f"      - name: r{i}\n        paths: [/svc{i}/]\n")
    with open(os.path.join(out, "nginx-routes.inc"), "w") as f:
        for i in range(n):
            f.write(f"location /svc{i}/ {{ proxy_pass http://origin; }}\n")
        f.write("location / { return 404; }\n")
    cidrs = cidr_list(m)
    with open(os.path.join(out, "cidrs.yaml"), "w") as f:
        f.write('_format_version: "3.0"\nservices:\n  - name: origin\n')
        f.write(f"    url: http://127.0.0.1:{origin}\n    routes:\n")
        f.write("      - name: plain\n        paths: [/]\n")
        f.write("    plugins:\n      - name: ip-restriction\n        config:\n          allow:\n")
        f.writelines(f"            - {c}\n" for c in cidrs)
    with open(os.path.join(out, "nginx-geo.inc"), "w") as f:
        f.writelines(f"{c} 1;\n" for c in cidrs)


def jwt(secret, claims):
    enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    head = enc(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = enc(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{enc(sig)}"


def supabase(kong_yml, out, origin):
    text = open(kong_yml).read()
    # Every upstream (auth:9999, rest:3000, realtime-dev.supabase-realtime:4000, ...) -> the origin.
    text = re.sub(r"http://[A-Za-z0-9_.-]+:[0-9]+", f"http://127.0.0.1:{origin}", text)
    with open(os.path.join(out, "supabase.yml"), "w") as f:
        f.write(text)
    # Keys shaped like a self-hosted install's: HS256 JWTs for the legacy keys, opaque sb_ keys.
    secret = b"bench-jwt-secret-with-at-least-32-characters"
    iat = 1700000000
    env = {
        "SUPABASE_ANON_KEY": jwt(secret, {"role": "anon", "iss": "supabase", "iat": iat, "exp": iat + 10**8}),
        "SUPABASE_SERVICE_KEY": jwt(secret, {"role": "service_role", "iss": "supabase", "iat": iat, "exp": iat + 10**8}),
        "SUPABASE_PUBLISHABLE_KEY": "sb_publishable_benchbenchbenchbenchbe",
        "SUPABASE_SECRET_KEY": "sb_secret_benchbenchbenchbenchbenchbe",
        "ANON_KEY_ASYMMETRIC": "eyJhbGciOiJFUzI1NiJ9.anon.sig",
        "SERVICE_ROLE_KEY_ASYMMETRIC": "eyJhbGciOiJFUzI1NiJ9.service.sig",
        "DASHBOARD_USERNAME": "supabase",
        "DASHBOARD_PASSWORD": "bench-dashboard-password",
        "JWT_ISSUER": "http://localhost:8000/auth/v1",
    }
    with open(os.path.join(out, "supabase.env"), "w") as f:
        f.writelines(f"export {k}='{v}'\n" for k, v in env.items())


if __name__ == "__main__":
    cmd, args = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if cmd == "plain" and len(args) == 2:
        plain(*args)
    elif cmd == "scale" and 2 <= len(args) <= 4:
        scale(*args)
    elif cmd == "supabase" and len(args) == 3:
        supabase(*args)
    else:
        sys.exit(__doc__)
