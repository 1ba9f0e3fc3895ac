#!/usr/bin/env python3
"""Sends COUNT hostile DHCP packets at a server: random bytes, truncations, bad option
lengths, hlen > 16, wrong op, oversized, floods from one MAC, REQUESTs for others'
addresses; built by mutating a captured packet with a fixed seed.

  dhcp_fuzz.py --iface IF --capture FILE --count N [--seed S] [--to ADDR]
"""
import argparse
import random
import socket


def load(path):
    return bytearray(bytes.fromhex("".join(l.strip() for l in open(path) if not l.startswith("#"))))


def mutate(base, rnd):
    p = bytearray(base)
    kind = rnd.randrange(9)
    if kind == 0:
        return bytearray(rnd.randbytes(rnd.randrange(0, 700)))
    if kind == 1:
        return p[: rnd.randrange(0, len(p))]
    if kind == 2:
        for _ in range(rnd.randrange(1, 20)):
            p[rnd.randrange(len(p))] = rnd.randrange(256)
        return p
    if kind == 3:  # an option length running past the end
        i = 240
        while i < len(p) - 2 and p[i] not in (0, 255):
            i += 2 + p[i + 1]
        if i < len(p) - 1:
            p[i - 1 if i > 241 else 241] = 250
        return p
    if kind == 4:
        p[2] = rnd.randrange(17, 256)  # hlen > 16
        return p
    if kind == 5:
        p[0] = 2  # a reply sent to the server
        return p
    if kind == 6:
        return p + bytearray(rnd.randbytes(rnd.randrange(1000, 3000)))  # oversized
    if kind == 7:
        p[28:34] = b"\x52\x54\x00\xff\xff\xff"  # a flood from one MAC
        return p
    # REQUEST for someone else's address, naming this server
    p[28:34] = bytes([0x52, 0x54, 0x00, 0xee, rnd.randrange(256), rnd.randrange(256)])
    opts = bytes([53, 1, 3, 50, 4, 10, 68, 0, 100, 54, 4, 10, 68, 0, 2, 255])
    return p[:240] + opts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iface", required=True)
    ap.add_argument("--capture", required=True)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=2131)
    ap.add_argument("--to", default="255.255.255.255")
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    base = load(a.capture)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, a.iface.encode())
    s.bind(("0.0.0.0", 68))
    for _ in range(a.count):
        s.sendto(bytes(mutate(base, rnd)), (a.to, 67))
    print(a.count)


if __name__ == "__main__":
    main()
