"""Exact bit packing of small signed integers into uint8 streams.

A b-bit signed value v in [-2^(b-1), 2^(b-1) - 1] is stored offset-binary
(u = v + 2^(b-1), an unsigned b-bit code) and the codes are laid out
little-endian, back to back, in one bit stream: INT2 puts 4 values in a byte,
INT4 puts 2, int6 puts 4 values in 3 bytes, int8 is the identity (a view as
uint8). The stream is zero-padded to a whole number of bytes, so unpacking
needs the value count. The GPTQ symbols (int6 in [-31, 31]), the LQER factors
(A in [-2, 1], B in [-8, 7]) and the int8 gates all fit these widths, which
is what lets the artifact store them at their true width if it wants to.

    pack(values, bits) -> uint8 tensor      unpack(data, bits, count) -> int8 tensor
"""

from __future__ import annotations

import torch

SUPPORTED_BITS = (2, 4, 6, 8)


def value_range(bits: int) -> tuple[int, int]:
    """The (lowest, highest) signed value a `bits`-wide code can hold."""
    assert 1 <= bits <= 8, bits
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def packed_num_bytes(count: int, bits: int) -> int:
    """Bytes a stream of `count` values at `bits` each occupies (padded to whole bytes)."""
    return (count * bits + 7) // 8


def pack(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Flatten `values` (any integer dtype, each in `value_range(bits)`) into a uint8 bit stream."""
    assert bits in SUPPORTED_BITS, f"unsupported width {bits}"
    lo, hi = value_range(bits)
    v = values.detach().reshape(-1).to(torch.int16).cpu()
    if v.numel():
        assert int(v.min()) >= lo and int(v.max()) <= hi, f"values outside int{bits} range [{lo}, {hi}]"
    codes = (v - lo).to(torch.uint8)
    if bits == 8:
        return codes.clone()
    per_unit, unit_bytes = _unit(bits)
    count = codes.numel()
    pad = (-count) % per_unit
    if pad:
        codes = torch.cat([codes, torch.zeros(pad, dtype=torch.uint8)])
    # Groups of `per_unit` codes fill exactly `unit_bytes` bytes: build each
    # unit as an integer, then split it into little-endian bytes.
    groups = codes.view(-1, per_unit).to(torch.int32)
    word = torch.zeros(groups.shape[0], dtype=torch.int32)
    for i in range(per_unit):
        word |= groups[:, i] << (i * bits)
    out = torch.stack([(word >> (8 * k)) & 0xFF for k in range(unit_bytes)], dim=1).to(torch.uint8)
    return out.reshape(-1)[: packed_num_bytes(count, bits)].clone()


def unpack(data: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of `pack`: the first `count` values of the stream as a flat int8 tensor."""
    assert bits in SUPPORTED_BITS, f"unsupported width {bits}"
    assert data.dtype == torch.uint8, data.dtype
    lo, _ = value_range(bits)
    need = packed_num_bytes(count, bits)
    assert data.numel() >= need, f"stream holds {data.numel()} bytes, {need} needed for {count} int{bits} values"
    raw = data.reshape(-1).cpu()[:need]
    if bits == 8:
        return (raw.to(torch.int16) + lo).to(torch.int8)
    per_unit, unit_bytes = _unit(bits)
    pad = (-raw.numel()) % unit_bytes
    if pad:
        raw = torch.cat([raw, torch.zeros(pad, dtype=torch.uint8)])
    b = raw.view(-1, unit_bytes).to(torch.int32)
    word = torch.zeros(b.shape[0], dtype=torch.int32)
    for k in range(unit_bytes):
        word |= b[:, k] << (8 * k)
    mask = (1 << bits) - 1
    codes = torch.stack([(word >> (i * bits)) & mask for i in range(per_unit)], dim=1).reshape(-1)[:count]
    return (codes + lo).to(torch.int8)


def _unit(bits: int) -> tuple[int, int]:
    """(values, bytes) of the smallest whole-byte unit at this width."""
    return {2: (4, 1), 4: (2, 1), 6: (4, 3)}[bits]


def pack_int2(values: torch.Tensor) -> torch.Tensor:
    return pack(values, 2)


def unpack_int2(data: torch.Tensor, count: int) -> torch.Tensor:
    return unpack(data, 2, count)


def pack_int4(values: torch.Tensor) -> torch.Tensor:
    return pack(values, 4)


def unpack_int4(data: torch.Tensor, count: int) -> torch.Tensor:
    return unpack(data, 4, count)


def pack_int6(values: torch.Tensor) -> torch.Tensor:
    return pack(values, 6)


def unpack_int6(data: torch.Tensor, count: int) -> torch.Tensor:
    return unpack(data, 6, count)


def pack_int8(values: torch.Tensor) -> torch.Tensor:
    return pack(values, 8)


def unpack_int8(data: torch.Tensor, count: int) -> torch.Tensor:
    return unpack(data, 8, count)
