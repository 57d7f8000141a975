#!/usr/bin/env python3
"""Writes the seeds of the esp_inbound, inner_packet and outer_demux targets (formats in
ike/src/esp/fuzz.rs). Run from ike/fuzz: python3 gen_seeds.py"""
import struct


def csum(data, acc=0):
    if len(data) % 2:
        data += b"\0"
    s = acc + sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def v4(src, dst, proto, l4, frag=0, l4_csum_at=None):
    total = 20 + len(l4)
    h = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, frag, 64, proto, 0,
                              bytes(src), bytes(dst)))
    h[10:12] = struct.pack("!H", 0xFFFF ^ csum(bytes(h)))
    l4 = bytearray(l4)
    if l4_csum_at is not None:
        ps = csum(bytes(src) + bytes(dst), proto + len(l4))
        l4[l4_csum_at:l4_csum_at + 2] = struct.pack("!H", 0xFFFF ^ csum(bytes(l4), ps))
    return bytes(h) + bytes(l4)


def v6(src, dst, nh, l4, l4_proto=None, l4_csum_at=None):
    l4 = bytearray(l4)
    if l4_csum_at is not None:
        ps = csum(src + dst, l4_proto + len(l4))
        l4[l4_csum_at:l4_csum_at + 2] = struct.pack("!H", 0xFFFF ^ csum(bytes(l4), ps))
    return struct.pack("!IHBB", 0x60000000, len(l4), nh, 64) + src + dst + bytes(l4)


def tcp(seq, payload, flags=0x10):
    return struct.pack("!HHIIBBHHH", 40000, 5201, seq, 77, 5 << 4, flags, 512, 0, 0) + payload


def udp(payload):
    return struct.pack("!HHHH", 5353, 53, 8 + len(payload), 0) + payload


A4, B4 = [10, 100, 0, 5], [10, 200, 0, 1]
A6 = bytes.fromhex("20010db8000000000000000000000005")
B6 = bytes.fromhex("20010db8000000000000000000000099")
TCP4 = v4(A4, B4, 6, tcp(1000, bytes(range(40))), l4_csum_at=16)
UDP6 = v6(A6, B6, 17, udp(b"hello world"), 17, 6)
ICMP4 = v4(A4, B4, 1, bytes([8, 0, 0, 0, 0, 1, 0, 1]), l4_csum_at=2)


def rec(op, body):
    return bytes([op]) + struct.pack("!H", len(body)) + body


def rel(d):
    return struct.pack("!Bh", 0, d)


ANY4 = bytes([1, 0x40])  # one selector: IPv4, any protocol, any address, ANY ports
NONE = bytes([0])


def esp_seed(suite, esn):
    flags = suite | (0x80 if esn else 0)
    s = bytes([flags]) + struct.pack("!H", 1024) + bytes([0])
    s += rec(1, rel(1) + bytes([2, 0]) + ANY4 + NONE + TCP4)       # IPv4, seq 1
    s += rec(1, rel(0) + bytes([2, 0]) + ANY4 + NONE + TCP4)       # seq 1 again: replay
    s += rec(1, rel(5) + bytes([0, 0]) + NONE + NONE + UDP6)       # IPv6, seq 6
    s += rec(1, rel(-3) + bytes([0, 1, 0, 0, 9, 1]) + NONE + NONE + UDP6)  # mutated
    s += rec(2, rel(1) + ICMP4 + bytes([1, 2, 2, 4]))              # raw trailer, seq 7
    s += rec(1, rel(2) + bytes([1, 0]) + NONE + NONE + b"")        # dummy (NH 59)
    s += rec(0, bytes(range(64)))                                 # garbage
    if esn:
        # Across a 2^32 boundary of the extended sequence number.
        s += rec(1, b"\x80" + struct.pack("!Q", 0xFFFFFFF0) + bytes([2, 0]) + NONE + NONE + TCP4)
        s += rec(1, rel(0x20) + bytes([2, 0]) + NONE + NONE + TCP4)
    return s


for suite in range(6):
    for esn in (False, True):
        open("seeds/esp_inbound/suite%d-%s" % (suite, "esn" if esn else "32"), "wb").write(
            esp_seed(suite, esn))


def inner_seed(flags, sels, pkts, icmp=b"\0"):
    return bytes([flags]) + struct.pack("!H", 1500) + icmp + sels + b"".join(
        struct.pack("!H", len(p)) + p for p in pkts)


segs = [v4(A4, B4, 6, tcp(1000 + 100 * i, bytes([i]) * (100 if i < 3 else 60),
                          0x10 if i < 3 else 0x18), l4_csum_at=16) for i in range(4)]
udps = [v6(A6, B6, 17, udp(bytes([i]) * 200), 17, 6) for i in range(3)]
frag4 = v4(A4, B4, 17, udp(b"x" * 16), frag=0x2000)  # first fragment (MF)
later4 = v4(A4, B4, 17, b"y" * 16, frag=100)
frag6 = v6(A6, B6, 44, bytes([17, 0, 0, 8 << 3, 0, 0, 0, 1]) + b"z" * 16)
echo6 = v6(A6, B6, 58, bytes([128, 0, 0, 0, 0, 1, 0, 1]), 58, 2)
tcp_sel = bytes([1, 0x62]) + struct.pack("!HH", 1000, 60000)  # IPv4 TCP ports 1000-60000
open("seeds/inner_packet/tcp4-gro", "wb").write(inner_seed(0x04, tcp_sel + NONE, segs))
open("seeds/inner_packet/udp6-uso", "wb").write(inner_seed(0x0C, NONE + NONE, udps))
open("seeds/inner_packet/mixed", "wb").write(
    inner_seed(0x0C, ANY4 + tcp_sel, [ICMP4, frag4, later4, frag6, echo6, TCP4, UDP6]))
df4 = bytearray(v4(A4, B4, 17, udp(b"d" * 1400)))
df4[6] = 0x40  # DF (the header checksum no longer matters here)
open("seeds/inner_packet/too-big", "wb").write(
    inner_seed(0x00, NONE + NONE, [bytes(df4), UDP6, echo6], icmp=b"\x07" + struct.pack("!H", 1390)))
udp_sel = lambda port: bytes([0x64]) + struct.pack("!HH", port, port)  # IPv4 UDP, one port
open("seeds/inner_packet/fragments-stateful", "wb").write(
    inner_seed(0x41, bytes([1]) + udp_sel(5353) + bytes([1]) + udp_sel(53), [frag4, later4, later4]))
open("seeds/inner_packet/fragments-opaque", "wb").write(
    inner_seed(0x01, bytes([1, 0x50]) + NONE, [later4, frag4, ICMP4]))


# outer_demux: SA table [n][spi...], then receives [carrier][seg: u16][len: u16][bytes].
SPI_A, SPI_B = 0xC0FFEE01, 0x00000101


def esp_pkt(spi, n=48):
    return struct.pack("!II", spi, 1) + bytes(range(n))


def recv(carrier, dgram, seg=0):
    return bytes([carrier]) + struct.pack("!HH", seg, len(dgram)) + dgram


def outer_seed(recvs):
    return bytes([2]) + struct.pack("!II", SPI_A, SPI_B) + b"".join(recvs)


def ipv4_hdr(words):
    h = bytearray(words * 4)
    h[0] = 0x40 | words
    h[9] = 50
    return bytes(h)


IKE = b"\0\0\0\0" + bytes(range(1, 29))
open("seeds/outer_demux/udp", "wb").write(outer_seed([
    recv(0, b"\xff"),                       # keepalive
    recv(0, IKE),                           # IKE behind the non-ESP marker
    recv(0, b"\0\0\0\0"),                   # the marker alone
    recv(0, esp_pkt(SPI_A)),                # ESP of an installed SA
    recv(0, esp_pkt(0x77777777)),           # unknown SPI
    recv(0, esp_pkt(SPI_B)[:7]),            # runt
    recv(0, b"\xff\xff"),                   # not a keepalive
    recv(0, b""),                           # empty
]))
# GRO: three ESP segments of one size and a keepalive last; a segment size past the length.
open("seeds/outer_demux/udp-gro", "wb").write(outer_seed([
    recv(0, esp_pkt(SPI_A) * 3 + b"\xff", seg=56),
    recv(0, esp_pkt(SPI_B) + esp_pkt(SPI_B, 20), seg=56),
    recv(0, esp_pkt(SPI_A), seg=1400),
]))
open("seeds/outer_demux/raw-v4", "wb").write(outer_seed([
    recv(1, ipv4_hdr(5) + esp_pkt(SPI_A)),  # ESP after 20 octets
    recv(1, ipv4_hdr(6) + esp_pkt(SPI_B)),  # after an option word
    recv(1, ipv4_hdr(15) + esp_pkt(0x0BAD0BAD)),  # unknown SPI after 60 octets
    recv(1, ipv4_hdr(5) + esp_pkt(SPI_A)[:5]),  # runt
    recv(1, ipv4_hdr(4) + esp_pkt(SPI_A)),  # IHL 4
    recv(1, ipv4_hdr(7)[:24]),              # cut inside its header
    recv(1, b""),                           # empty
]))
open("seeds/outer_demux/raw-v6", "wb").write(outer_seed([
    recv(2, esp_pkt(SPI_B)),
    recv(2, esp_pkt(0)),                    # SPI 0: never installed
    recv(2, b"\xff"),                       # no keepalives on raw sockets
    recv(2, b""),
]))
