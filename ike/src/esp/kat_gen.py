#!/usr/bin/env python3
"""Independent generator of the ESP known-answer vectors in tests.rs.

Builds RFC 4303 tunnel-mode ESP packets with pyca/cryptography (OpenSSL), not with the
Rust code under test: AES-GCM-16 per RFC 4106 (nonce = salt | IV, AAD = SPI | seq or
SPI | seq-hi | seq-lo), ChaCha20-Poly1305 per RFC 7634 (same nonce/AAD layout), AES-CBC
per RFC 3602 with HMAC-SHA2 truncated per RFC 4868 (ESN high bits appended to the ICV
input only, RFC 4303 3.3.2.1). The explicit IV is the 64-bit sequence number for AEADs;
for CBC it is AES_K(seq | SPI | "ESP\\x01"), as the Rust side derives it.
Run: python3 ike/src/esp/kat_gen.py
"""
import hmac, hashlib
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

def inner(n, v6=False):
    first = 0x60 if v6 else 0x45
    return bytes([first] + [(i * 7 + 3) & 0xff for i in range(1, n)])

def trailer(n, align, nh):
    padded = -(-(n + 2) // align) * align
    pad = padded - n - 2
    return bytes(range(1, pad + 1)) + bytes([pad, nh])

def aead(kind, key, salt, spi, seq, esn, pt_inner, nh):
    # AES-GCM pads to the AES block (the sender's choice, RFC 4303 2.4), ChaCha20 to 4.
    pt = pt_inner + trailer(len(pt_inner), 16 if kind == 'gcm' else 4, nh)
    iv = seq.to_bytes(8, 'big')
    lo = (seq & 0xffffffff).to_bytes(4, 'big')
    aad = spi + ((seq >> 32).to_bytes(4, 'big') + lo if esn else lo)
    c = AESGCM(key) if kind == 'gcm' else ChaCha20Poly1305(key)
    return spi + lo + iv + c.encrypt(salt + iv, pt, aad)

def cbc(ekey, ikey, hname, icv_len, spi, seq, esn, pt_inner, nh):
    pt = pt_inner + trailer(len(pt_inner), 16, nh)
    ecb = Cipher(algorithms.AES(ekey), modes.ECB()).encryptor()
    iv = ecb.update(seq.to_bytes(8, 'big') + spi + b'ESP\x01')
    enc = Cipher(algorithms.AES(ekey), modes.CBC(iv)).encryptor()
    ct = enc.update(pt) + enc.finalize()
    lo = (seq & 0xffffffff).to_bytes(4, 'big')
    covered = spi + lo + iv + ct
    mac_in = covered + ((seq >> 32).to_bytes(4, 'big') if esn else b'')
    tag = hmac.new(ikey, mac_in, hname).digest()[:icv_len]
    return covered + tag

k = lambda n, b: bytes((b + i) & 0xff for i in range(n))
spi = bytes.fromhex('c0ffee01')
print('gcm256', aead('gcm', k(32, 0x10), k(4, 0xa0), spi, 1, False, inner(61), 4).hex())
print('gcm128_esn', aead('gcm', k(16, 0x20), k(4, 0xb0), spi, 0x1_0000_0005, True, inner(80, True), 41).hex())
print('chacha', aead('chacha', k(32, 0x30), k(4, 0xc0), spi, 7, False, inner(45), 4).hex())
print('cbc128_sha256', cbc(k(16, 0x40), k(32, 0x50), hashlib.sha256, 16, spi, 3, False, inner(50), 4).hex())
print('cbc256_sha512_esn', cbc(k(32, 0x60), k(64, 0x70), hashlib.sha512, 32, spi, 0x2_0000_0001, True, inner(33), 4).hex())
