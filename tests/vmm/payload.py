#!/usr/bin/env python3
"""Writes the deterministic test payload (MIB mebibytes) to stdout.

usage: payload.py MIB            the payload itself (also /payload.bin in the guest)
       payload.py MIB REPEAT     print sha256 and length of REPEAT payloads back to back
"""
import hashlib
import random
import sys


def payload(mib):
    return random.Random(0x1889).randbytes(mib << 20)


def main():
    mib = int(sys.argv[1])
    data = payload(mib)
    if len(sys.argv) > 2:
        h = hashlib.sha256()
        for _ in range(int(sys.argv[2])):
            h.update(data)
        print(h.hexdigest(), len(data) * int(sys.argv[2]))
    else:
        sys.stdout.buffer.write(data)


if __name__ == "__main__":
    main()
