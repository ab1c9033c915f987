"""A UDP test backend.

  udp_backend.py PORT TAG echo   answers each datagram with "TAG:" and the datagram
  udp_backend.py PORT TAG dns    answers a DNS query: its ID, flags QR+AA, NOERROR, and
                                 its question, as a DNS server would (no records)
"""
import socket
import sys

port, tag, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", port))
while True:
    data, peer = s.recvfrom(65535)
    if mode == "dns":
        if len(data) < 12:
            continue
        out = data[:2] + b"\x84\x00" + data[4:6] + b"\x00\x00\x00\x00\x00\x00" + data[12:]
    else:
        out = tag.encode() + b":" + data
    s.sendto(out, peer)
