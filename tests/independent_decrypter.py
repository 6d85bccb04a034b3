"""A decrypter written from docs/recording-format.md alone, sharing no code with storage/.

If the spec is precise enough for someone else to read our blobs, this file agrees with the
vault's own reader on every blob the tests produce.
"""

from __future__ import annotations

import json
import struct

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def decrypt(blob: bytes, data_key: bytes) -> tuple[dict, list[tuple[int, int, bytes]]]:
    if blob[:6] != b"IVRREC":
        raise ValueError("magic")
    version, header_len = struct.unpack(">HI", blob[6:12])
    if version != 1:
        raise ValueError("version")
    aad = blob[: 12 + header_len]
    header = json.loads(aad[12:])
    prefix = bytes.fromhex(header["nonce_prefix"])
    aead = AESGCM(data_key)
    pos, counter, frames, done = len(aad), 0, [], False
    while not done:
        if pos == len(blob):
            raise ValueError("no final chunk")
        (n,) = struct.unpack(">I", blob[pos : pos + 4])
        sealed = blob[pos + 4 : pos + 4 + n]
        if len(sealed) != n:
            raise ValueError("truncated")
        pos += 4 + n
        for flag in (0, 1):
            nonce = prefix + struct.pack(">I", counter) + bytes([flag])
            try:
                plain = aead.decrypt(nonce, sealed, aad)
                done = flag == 1
                break
            except Exception:
                continue
        else:
            raise ValueError(f"chunk {counter} does not authenticate")
        i = 0
        while i < len(plain):
            track, ts, length = struct.unpack(">BIH", plain[i : i + 7])
            frames.append((track, ts, plain[i + 7 : i + 7 + length]))
            i += 7 + length
        counter += 1
    if pos != len(blob):
        raise ValueError("trailing data")
    return header, frames
