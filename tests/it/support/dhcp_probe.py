#!/usr/bin/env python3
"""Replays a captured DHCP client packet (tests/../captures/*.hex) with a chosen MAC and xid,
and prints every reply that arrives as JSON, one object per line. Used by tests/it/dhcp.rs for
the PXE clients that no command-line DHCP client can imitate (ProxyDHCP, discovery).

  dhcp_probe.py --iface IF --capture FILE --mac MAC [--to ADDR] [--port 67] [--src-port 68]
                [--msg-type N] [--requested IP] [--server-id IP] [--ciaddr IP] [--wait 3]
"""
import argparse
import json
import os
import socket
import struct
import sys
import time


def load_capture(path):
    hexdata = "".join(l.strip() for l in open(path) if not l.startswith("#"))
    return bytearray(bytes.fromhex(hexdata))


def options(pkt):
    out, i = {}, 240
    while i < len(pkt):
        code = pkt[i]
        if code == 0:
            i += 1
            continue
        if code == 255:
            break
        n = pkt[i + 1]
        out[str(code)] = pkt[i + 2:i + 2 + n].hex()
        i += 2 + n
    return out


def set_option(pkt, code, value):
    """Replaces (or adds) option `code` in a packet that ends with option 255."""
    i, body = 240, bytearray()
    while i < len(pkt):
        c = pkt[i]
        if c == 0:
            i += 1
            continue
        if c == 255:
            break
        n = pkt[i + 1]
        if c != code:
            body += pkt[i:i + 2 + n]
        i += 2 + n
    if value is not None:
        body += bytes([code, len(value)]) + value
    return pkt[:240] + body + b"\xff"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iface", required=True)
    ap.add_argument("--capture", required=True)
    ap.add_argument("--mac", required=True)
    ap.add_argument("--to", default="255.255.255.255")
    ap.add_argument("--port", type=int, default=67)
    ap.add_argument("--src-port", type=int, default=68)
    ap.add_argument("--bind", default="0.0.0.0")
    ap.add_argument("--msg-type", type=int)
    ap.add_argument("--requested")
    ap.add_argument("--server-id")
    ap.add_argument("--ciaddr")
    ap.add_argument("--wait", type=float, default=3.0)
    a = ap.parse_args()

    pkt = load_capture(a.capture)
    mac = bytes.fromhex(a.mac.replace(":", ""))
    xid = os.urandom(4)
    pkt[4:8] = xid
    pkt[28:34] = mac
    if a.ciaddr:
        pkt[12:16] = socket.inet_aton(a.ciaddr)
    if a.msg_type:
        pkt = set_option(pkt, 53, bytes([a.msg_type]))
    if a.requested:
        pkt = set_option(pkt, 50, socket.inet_aton(a.requested))
    if a.server_id:
        pkt = set_option(pkt, 54, socket.inet_aton(a.server_id))

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, a.iface.encode())
    s.bind((a.bind, a.src_port))
    # Replies are read off the wire (AF_PACKET), as firmware does: a reply unicast to the
    # address being offered reaches this interface's MAC although the kernel has no such address.
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
    raw.bind((a.iface, 0))
    s.sendto(bytes(pkt), (a.to, a.port))
    deadline = time.time() + a.wait
    while True:
        left = deadline - time.time()
        if left <= 0:
            break
        raw.settimeout(left)
        try:
            ip = raw.recv(65535)
        except socket.timeout:
            break
        ihl = (ip[0] & 0x0F) * 4
        if len(ip) < ihl + 8 or ip[9] != 17:
            continue
        sport, dport = struct.unpack("!HH", ip[ihl:ihl + 4])
        if dport != a.src_port:
            continue
        data = ip[ihl + 8:]
        src = (socket.inet_ntoa(ip[12:16]), sport)
        if len(data) < 240 or data[0] != 2 or data[4:8] != xid:
            continue
        print(json.dumps({
            "from": "%s:%d" % src,
            "len": len(data),
            "yiaddr": socket.inet_ntoa(data[16:20]),
            "siaddr": socket.inet_ntoa(data[20:24]),
            "file": data[108:236].split(b"\0")[0].decode("latin-1"),
            "options": options(data),
        }))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
