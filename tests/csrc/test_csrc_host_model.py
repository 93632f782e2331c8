"""CPU checks of the CUDA kernels' index math and dropout masks, on the kernels' own code.

csrc/philox.cuh and csrc/tile_layout.cuh hold the integer functions the kernels run (Philox,
dropout thresholds and group mapping, shared-memory swizzle, ldmatrix lane addresses, attention
loop bounds); tests/csrc/host_model.cpp exports them for the host. Here they are compiled with g++
and checked against Random123's known answers, an independent Python model (philox_ref.py), and a
lane-by-lane emulation of ldmatrix / mma.sync m16n8k16 (fragment layouts from the PTX ISA): every
fragment the attention kernels load must hold exactly the sub-matrix the mma expects, with no
shared-memory bank conflict, and the tiling must visit every visible (query, key) pair once.
The warp-to-tile assignments below mirror csrc/attention_fwd.cu and attention_bwd.cu.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import philox_ref

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"

KAT = [  # Random123 kat_vectors, philox4x32 10 rounds: counter, key, result
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not found")
    out = tmp_path_factory.mktemp("host_model") / "libptft_host_model.so"
    cmd = [
        gxx,
        "-std=c++17",
        "-O1",
        "-shared",
        "-fPIC",
        f"-I{CSRC}",
        str(Path(__file__).parent / "host_model.cpp"),
    ]
    subprocess.run([*cmd, "-o", str(out)], check=True, capture_output=True)
    lib = ctypes.CDLL(str(out))
    u32, u64, i32 = ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int
    sigs = {
        "m_philox": (None, [ctypes.POINTER(u32), u32, u32, ctypes.POINTER(u32)]),
        "m_drop_threshold": (u32, [ctypes.c_float]),
        "m_keep_mask8": (u32, [u64, u64, u64, u32]),
        "m_keep_bits8": (u32, [u64, u64, u64, u32]),
        "m_attn_groups_per_row": (u64, [i32]),
        "m_attn_drop_group": (u64, [u64, u64, i32]),
        "m_attn_drop_slot": (i32, [i32]),
        "m_swizzle": (i32, [i32, i32, i32]),
        "m_frag_chunk": (i32, [i32, i32, i32, i32]),
        "m_lane_row": (i32, [i32, i32]),
        "m_lane_chunk": (i32, [i32, i32]),
        "m_fwd_key_end": (i32, [i32] * 6),
        "m_bwd_query_begin": (i32, [i32] * 6),
        "m_tile_all_visible": (i32, [i32] * 8),
        "m_linear_cross_entropy_bwd_operands": (i32, [i32]),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


def _philox_cpp(lib, ctr, key):
    c = (ctypes.c_uint32 * 4)(*ctr)
    out = (ctypes.c_uint32 * 4)()
    lib.m_philox(c, key[0], key[1], out)
    return tuple(out)


# --------------------------------------------------------------------------------------- dropout


@pytest.mark.parametrize("ctr, key, want", KAT)
def test_philox_known_answers(lib, ctr, key, want):
    assert _philox_cpp(lib, ctr, key) == want
    assert tuple(int(x) for x in philox_ref.philox4x32_10(np.array(ctr, dtype=np.uint32), key)) == want


def test_philox_python_model_matches_cpp(lib):
    rng = np.random.default_rng(0)
    for _ in range(200):
        ctr = tuple(int(x) for x in rng.integers(0, 2**32, 4))
        key = tuple(int(x) for x in rng.integers(0, 2**32, 2))
        assert _philox_cpp(lib, ctr, key) == tuple(
            int(x) for x in philox_ref.philox4x32_10(np.array(ctr), key)
        )


def test_drop_threshold_rounds_like_python(lib):
    ps = [0.0, 0.1, 0.3, 0.5, 0.9, 0.999, 1.0 - 2**-18, 3.5 / 65536, 4.5 / 65536, 1e-9]
    ps += list(np.random.default_rng(1).random(200))
    for p in ps:
        pf = float(np.float32(p))
        assert lib.m_drop_threshold(pf) == philox_ref.threshold(pf), p


@pytest.mark.parametrize("p", [0.1, 0.5, 0.77])
def test_elementwise_masks_match_model_at_any_alignment(lib, p):
    seed, offset = 0x1234_5678_9ABC_DEF0, 0x0FED_CBA9_8765_4321
    t = lib.m_drop_threshold(p)
    ref = philox_ref.elementwise_keep(seed, offset, 4096, p)
    for idx0 in [0, 1, 3, 7, 8, 13, 1000, 4080, 4087]:
        bits = lib.m_keep_bits8(idx0, seed, offset, t)
        got = np.array([(bits >> i) & 1 for i in range(8)], dtype=bool)
        assert (got == ref[idx0 : idx0 + 8]).all(), idx0
    assert abs(ref.mean() - (1 - p)) < 0.03


@pytest.mark.parametrize("max_k", [1, 31, 32, 33, 100])
def test_attention_mask_mapping_matches_model_and_is_injective(lib, max_k):
    batch, hq, max_q, p = 2, 3, 5, 0.3
    seed, offset = 987654321, 2**40 + 17
    ref = philox_ref.attention_keep(seed, offset, batch, hq, max_q, max_k, p)
    gpr = lib.m_attn_groups_per_row(max_k)
    t = lib.m_drop_threshold(p)
    seen = set()
    for b in range(batch):
        for h in range(hq):
            for i in range(max_q):
                row = (b * hq + h) * max_q + i
                for j in range(max_k):
                    grp, slot = lib.m_attn_drop_group(row, gpr, j), lib.m_attn_drop_slot(j)
                    assert (grp, slot) not in seen
                    seen.add((grp, slot))
                    kept = (lib.m_keep_mask8(grp, seed, offset, t) >> slot) & 1
                    assert bool(kept) == ref[b, h, i, j]


def test_attention_dropout_statistics():
    keep = philox_ref.attention_keep(5, 6, 2, 4, 64, 96, 0.25)
    assert abs(keep.mean() - 0.75) < 0.01
    # neighbours in a group are not correlated (each slot its own 16 bits)
    a, b = keep[..., 0::2].ravel().astype(float), keep[..., 1::2].ravel().astype(float)
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.03


def test_kernel_threads_read_their_keys_slots(lib):
    """The bits each mma thread reads (attention_fwd.cu: n-tile nt of a 64-key tile, group of key
    n0 + 32 (nt // 4) + 2t, bit (nt % 4) * 2 + e; attention_bwd.cu: 32-key pass kb, group of key
    kb + 2t, bit nt * 2 + e) are the slots philox.cuh assigns to key n0 + 8 nt + 2t + e."""
    gpr = lib.m_attn_groups_per_row(300)
    for row in (0, 7):
        for t in range(4):
            for n0 in (0, 64, 192):
                for nt in range(8):
                    for e in range(2):
                        j = n0 + nt * 8 + 2 * t + e
                        assert lib.m_attn_drop_group(
                            row, gpr, n0 + 32 * (nt // 4) + 2 * t
                        ) == lib.m_attn_drop_group(row, gpr, j)
                        assert (nt % 4) * 2 + e == lib.m_attn_drop_slot(j)
            for kb in (0, 32, 96):
                for nt in range(4):
                    for e in range(2):
                        j = kb + nt * 8 + 2 * t + e
                        assert lib.m_attn_drop_group(row, gpr, kb + 2 * t) == lib.m_attn_drop_group(
                            row, gpr, j
                        )
                        assert nt * 2 + e == lib.m_attn_drop_slot(j)


# ----------------------------------------------------------------- swizzle, ldmatrix, mma.sync


@pytest.mark.parametrize("C", [4, 8, 16])
@pytest.mark.parametrize("rows", [16, 64, 128])
def test_swizzle_is_a_bijection_within_rows(lib, C, rows):
    chunks = [lib.m_swizzle(C, r, c) for r in range(rows) for c in range(C)]
    assert sorted(chunks) == list(range(rows * C))
    for r in range(rows):  # a row stays within its own 128-byte lines (C >= 8) or line pair (C = 4)
        line = {lib.m_swizzle(C, r, c) // max(C, 8) for c in range(C)}
        assert len(line) == 1


def _bank_groups_distinct(chunks):
    """8 lanes' 16-byte accesses in one shared-memory phase: conflict-free iff their 16-byte bank
    groups (chunk mod 8) differ."""
    return len({c % 8 for c in chunks}) == len(chunks)


def _lane_chunks(lib, C, pattern, base, rw, cw, rk, ck):
    """The chunk each lane addresses, computed as the kernels do: a lane base from the warp's
    offsets (Tile::lane_rows16/8x2), then Tile::at for the loop offsets; base in chunks (a
    multiple of 8: the 128-byte aligned tile start)."""
    out = []
    for lane in range(32):
        lb = base + lib.m_swizzle(C, lib.m_lane_row(pattern, lane), lib.m_lane_chunk(pattern, lane))
        out.append(lib.m_frag_chunk(C, lib.m_frag_chunk(C, lb, rw, cw), rk, ck))
    return out


@pytest.mark.parametrize("C", [4, 8, 16])
@pytest.mark.parametrize("pattern", [0, 1])
def test_fragment_addresses_equal_swizzle_and_are_conflict_free(lib, C, pattern):
    base = 8 * 37
    offs = [c for c in range(0, C, 2)]
    for rw in (0, 16, 48):
        for rk in (0, 16, 32):
            for cw in offs:
                for ck in offs:
                    if cw & ck or cw + ck >= C:  # the kernels' offsets never share bits
                        continue
                    got = _lane_chunks(lib, C, pattern, base, rw, cw, rk, ck)
                    want = [
                        base
                        + lib.m_swizzle(
                            C,
                            rw + rk + lib.m_lane_row(pattern, lane),
                            cw + ck + lib.m_lane_chunk(pattern, lane),
                        )
                        for lane in range(32)
                    ]
                    assert got == want
                    for ph in range(4):
                        assert _bank_groups_distinct(got[8 * ph : 8 * ph + 8])


@pytest.mark.parametrize(
    "C, rows, threads", [(4, 128, 128), (8, 64, 128), (16, 128, 256), (4, 64, 256), (16, 64, 256)]
)
def test_cp_async_tile_loads_cover_once_without_conflicts(lib, C, rows, threads):
    """Tile::load_async: thread tid, step i copies chunk idx = i * threads + tid → (idx / C, idx % C)."""
    seen = []
    for i in range(rows * C // threads):
        for w in range(threads // 32):
            chunks = []
            for lane in range(32):
                idx = i * threads + w * 32 + lane
                r, c = divmod(idx, C)
                seen.append((r, c))
                chunks.append(lib.m_swizzle(C, r, c))
            for ph in range(4):
                assert _bank_groups_distinct(chunks[8 * ph : 8 * ph + 8])
    assert sorted(seen) == [(r, c) for r in range(rows) for c in range(C)]


@pytest.mark.parametrize("C", [4, 8, 16])
def test_accumulator_pair_stores_are_conflict_free(lib, C):
    """st_shared_b32(tile.pair(row0 + g (+8), col0 + 2t)): 32 lanes x 4 bytes, one word each."""
    for row0 in (0, 16, 40):
        for col0 in range(0, 8 * C, 8):
            for r8 in (0, 8):
                banks = set()
                for lane in range(32):
                    g, t = lane // 4, lane % 4
                    col = col0 + 2 * t
                    byte = lib.m_swizzle(C, row0 + g + r8, col // 8) * 16 + (col % 8) * 2
                    banks.add((byte // 4) % 32)
                assert len(banks) == 32


# lane-by-lane emulation of ldmatrix and the mma.m16n8k16 operand layouts (PTX ISA)


def _smem(lib, mat):
    """A (rows, 8 C) matrix laid out in swizzled chunks: (rows * C, 8) array, chunk-indexed."""
    rows, cols = mat.shape
    C = cols // 8
    out = np.zeros((rows * C, 8))
    for r in range(rows):
        for c in range(C):
            out[lib.m_swizzle(C, r, c)] = mat[r, 8 * c : 8 * c + 8]
    return out


def _ldmatrix(smem, base, chunks, trans):
    """regs[lane][i] = (lo, hi) of matrix i: rows at the chunks lanes 8i..8i+7 address."""
    regs = np.zeros((32, 4, 2))
    for i in range(4):
        m = smem[np.array(chunks[8 * i : 8 * i + 8]) - base]
        if trans:
            m = m.T
        for lane in range(32):
            regs[lane, i] = m[lane // 4, 2 * (lane % 4) : 2 * (lane % 4) + 2]
    return regs


def _a_of(regs):
    """The 16x16 A operand that mma.m16n8k16 reads from four registers per lane."""
    a = np.zeros((16, 16))
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for h in range(2):
            a[g, 2 * t + h], a[g + 8, 2 * t + h] = regs[lane, 0, h], regs[lane, 1, h]
            a[g, 2 * t + 8 + h], a[g + 8, 2 * t + 8 + h] = regs[lane, 2, h], regs[lane, 3, h]
    return a


def _b_of(regs, first):
    """The 16x8 B operand (k x n) from registers first, first + 1 of each lane."""
    b = np.zeros((16, 8))
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for h in range(2):
            b[2 * t + h, g], b[2 * t + 8 + h, g] = regs[lane, first, h], regs[lane, first + 1, h]
    return b


def _load(lib, mat, pattern, rw, cw, rk, ck, trans, base=8 * 11):
    C = mat.shape[1] // 8
    return _ldmatrix(_smem(lib, mat), base, _lane_chunks(lib, C, pattern, base, rw, cw, rk, ck), trans)


ROWS16, ROWS8X2 = 0, 1


@pytest.mark.parametrize("d, warps, mt_per_warp", [(32, 4, 2), (64, 4, 2), (128, 8, 1)])
def test_forward_fragments(lib, d, warps, mt_per_warp):
    rng = np.random.default_rng(d)
    km = warps * 16 * mt_per_warp
    q, k, v = rng.random((km, d)), rng.random((64, d)), rng.random((64, d))
    for w in range(warps):
        w0 = w * 16 * mt_per_warp
        for mt in range(mt_per_warp):
            for kk in range(d // 16):  # S = Q Kᵀ: A = Q rows, B = K rows as [n][k]
                a = _a_of(_load(lib, q, ROWS16, w0, 0, mt * 16, kk * 2, False))
                assert (a == q[w0 + mt * 16 : w0 + mt * 16 + 16, kk * 16 : kk * 16 + 16]).all()
    for kk in range(d // 16):
        for np_ in range(4):
            regs = _load(lib, k, ROWS8X2, 0, 0, np_ * 16, kk * 2, False)
            for half in range(2):
                n = np_ * 16 + 8 * half
                assert (_b_of(regs, 2 * half) == k[n : n + 8, kk * 16 : kk * 16 + 16].T).all()
    for kk in range(4):  # O += P V: B = V stored [k][n], ldmatrix.trans
        for dp in range(d // 16):
            regs = _load(lib, v, ROWS16, 0, 0, kk * 16, dp * 2, True)
            for half in range(2):
                n = dp * 16 + 8 * half
                assert (_b_of(regs, 2 * half) == v[kk * 16 : kk * 16 + 16, n : n + 8]).all()


def _acc_to_a(c_left, c_right):
    """frag_a_from_acc: two 16x8 accumulator tiles (C layout) as the A operand of the next mma."""
    regs = np.zeros((32, 4, 2))
    for lane in range(32):
        g, t = lane // 4, lane % 4
        regs[lane, 0] = c_left[g, 2 * t : 2 * t + 2]
        regs[lane, 1] = c_left[g + 8, 2 * t : 2 * t + 2]
        regs[lane, 2] = c_right[g, 2 * t : 2 * t + 2]
        regs[lane, 3] = c_right[g + 8, 2 * t : 2 * t + 2]
    return regs


def test_accumulators_repack_as_the_next_a_operand():
    s = np.random.default_rng(3).random((16, 16))
    assert (_a_of(_acc_to_a(s[:, :8], s[:, 8:])) == s).all()


@pytest.mark.parametrize("d, kn", [(32, 128), (64, 128), (128, 64)])
def test_backward_fragments(lib, d, kn):
    """attention_bwd.cu's three phases with 8 warps: 1. warps 4 (queries) x 2 (key halves, 32-key
    passes); 2. warp w: keys 16 (w % kn/16), columns kDW (w // kn/16); 3. warps 4 x 2 column halves."""
    rng = np.random.default_rng(d + kn)
    km, kdw, kdq = 64, d * (kn // 16) // 8, d // 2
    q, do, k, v = rng.random((km, d)), rng.random((km, d)), rng.random((kn, d)), rng.random((kn, d))
    pm, ds = rng.random((km, kn)), rng.random((km, kn))
    C_kv = d // 8
    for w in range(8):
        wm, wn = w & 3, w >> 2
        kw = wn * kn // 2
        for kk in range(d // 16):
            for mat in (q, do):
                a = _a_of(_load(lib, mat, ROWS16, wm * 16, 0, 0, kk * 2, False))
                assert (a == mat[wm * 16 : wm * 16 + 16, kk * 16 : kk * 16 + 16]).all()
            for half in range(kn // 64):
                for np_ in range(2):
                    for mat in (k, v):
                        regs = _load(lib, mat, ROWS8X2, kw, 0, np_ * 16 + 32 * half, kk * 2, False)
                        # the kernel adds the pass offset after Tile::at: same chunks (checked below)
                        lanes_a = _lane_chunks(lib, C_kv, ROWS8X2, 0, kw, 0, np_ * 16, kk * 2)
                        lanes_b = _lane_chunks(lib, C_kv, ROWS8X2, 0, kw, 0, np_ * 16 + 32 * half, kk * 2)
                        assert [x + 32 * half * C_kv for x in lanes_a] == lanes_b
                        for e in range(2):
                            n = kw + 32 * half + np_ * 16 + 8 * e
                            assert (_b_of(regs, 2 * e) == mat[n : n + 8, kk * 16 : kk * 16 + 16].T).all()
        kr, dpart = w % (kn // 16), w // (kn // 16)
        for kk in range(km // 16):  # phase 2: A = (P or dS)ᵀ by ldmatrix.trans, B = dO or Q by .trans
            for mat in (pm, ds):
                a = _a_of(_load(lib, mat, ROWS8X2, 0, kr * 2, kk * 16, 0, True))
                assert (a == mat[kk * 16 : kk * 16 + 16, kr * 16 : kr * 16 + 16].T).all()
            for dq in range(kdw // 16):
                for mat in (do, q):
                    regs = _load(lib, mat, ROWS16, 0, dpart * kdw // 8, kk * 16, dq * 2, True)
                    for e in range(2):
                        n = dpart * kdw + dq * 16 + 8 * e
                        assert (_b_of(regs, 2 * e) == mat[kk * 16 : kk * 16 + 16, n : n + 8]).all()
        for kk in range(kn // 16):  # phase 3: A = dS rows, B = K stored [k][n] by .trans
            a = _a_of(_load(lib, ds, ROWS16, wm * 16, 0, 0, kk * 2, False))
            assert (a == ds[wm * 16 : wm * 16 + 16, kk * 16 : kk * 16 + 16]).all()
            for dq in range(kdq // 16):
                regs = _load(lib, k, ROWS16, 0, wn * kdq // 8, kk * 16, dq * 2, True)
                for e in range(2):
                    n = wn * kdq + dq * 16 + 8 * e
                    assert (_b_of(regs, 2 * e) == k[kk * 16 : kk * 16 + 16, n : n + 8]).all()


@pytest.mark.parametrize("d, kn", [(32, 128), (64, 128), (128, 64)])
def test_backward_warp_work_partitions_the_tile(d, kn):
    phase1, phase2, phase3 = [], [], []
    kdw = d * (kn // 16) // 8
    for w in range(8):
        wm, wn = w & 3, w >> 2
        for half in range(kn // 64):
            for r in range(16):
                for key in range(32):
                    phase1.append((wm * 16 + r, wn * kn // 2 + 32 * half + key))
        kr, dpart = w % (kn // 16), w // (kn // 16)
        phase2 += [(kr * 16 + r, dpart * kdw + c) for r in range(16) for c in range(kdw)]
        phase3 += [(wm * 16 + r, wn * d // 2 + c) for r in range(16) for c in range(d // 2)]
    assert sorted(phase1) == [(i, j) for i in range(64) for j in range(kn)]
    assert sorted(phase2) == [(j, c) for j in range(kn) for c in range(d)]
    assert sorted(phase3) == [(i, c) for i in range(64) for c in range(d)]


# ------------------------------------------------------------------------------------ tiling


def _visible(i, j, lq, lk, causal, prefix=0):
    """Query i sees key j: causal bottom-right aligned, and (prefix LM) every key j < prefix."""
    return i < lq and j < lk and (not causal or j <= i + (lk - lq) or j < prefix)


def _cases():
    """(lq, lk, causal, prefix): plain and causal, then prefix LM with prefixes that end inside a
    tile, on a tile edge, past the diagonal of the first tiles and past the keys."""
    out = []
    for lq, lk in [
        (1, 1),
        (1, 7),
        (7, 1),
        (63, 64),
        (64, 64),
        (65, 129),
        (200, 77),
        (77, 200),
        (128, 1),
        (3, 300),
    ]:
        for causal in (0, 1):
            out.append((lq, lk, causal, 0))
    for lq, lk, prefix in [(200, 200, 37), (200, 200, 64), (200, 200, 128), (77, 200, 150), (200, 77, 90),
                           (65, 129, 129), (130, 130, 1), (1, 7, 5)]:  # fmt: skip
        out.append((lq, lk, 1, prefix))
    return out


@pytest.mark.parametrize("lq, lk, causal, prefix", _cases())
@pytest.mark.parametrize("bm", [64, 128])
def test_forward_tiling_covers_each_visible_pair_once(lib, lq, lk, causal, prefix, bm):
    count = np.zeros((lq, lk), dtype=int)
    for m0 in range(0, lq, bm):  # blocks with m0 >= lq exit at once
        end = lib.m_fwd_key_end(m0, bm, lq, lk, causal, prefix)
        for n0 in range(0, end, 64):
            full = lib.m_tile_all_visible(m0, bm, n0, 64, lq, lk, causal, prefix)
            for i in range(m0, min(m0 + bm, lq)):
                for j in range(n0, min(n0 + 64, lk)):
                    if full:  # the fast path skips the masks: every pair must be visible
                        assert _visible(i, j, lq, lk, causal, prefix)
                    if _visible(i, j, lq, lk, causal, prefix):
                        count[i, j] += 1
        # keys at or past `end` are invisible to the whole block
        for i in range(m0, min(m0 + bm, lq)):
            for j in range(max(end, 0), lk):
                assert not _visible(i, j, lq, lk, causal, prefix)
    want = _visible_matrix(lq, lk, causal, prefix)
    assert (count == want).all()


def _visible_matrix(lq, lk, causal, prefix):
    return np.array(
        [[_visible(i, j, lq, lk, causal, prefix) for j in range(lk)] for i in range(lq)], dtype=int
    )


@pytest.mark.parametrize("lq, lk, causal, prefix", _cases())
@pytest.mark.parametrize("kn", [64, 128])
def test_backward_tiling_covers_each_visible_pair_once(lib, lq, lk, causal, prefix, kn):
    count = np.zeros((lq, lk), dtype=int)
    for n0 in range(0, lk, kn):
        begin = lib.m_bwd_query_begin(n0, 64, lq, lk, causal, prefix)
        assert begin % 64 == 0
        for i in range(0, min(begin, lq)):  # skipped query tiles see none of these keys
            for j in range(n0, min(n0 + kn, lk)):
                assert not _visible(i, j, lq, lk, causal, prefix)
        for m0 in range(begin, lq, 64):
            for kb in range(n0, n0 + kn, 32):  # the warps' 32-key passes decide the fast path
                full = lib.m_tile_all_visible(m0, 64, kb, 32, lq, lk, causal, prefix)
                for i in range(m0, min(m0 + 64, lq)):
                    for j in range(kb, min(kb + 32, lk)):
                        if full:
                            assert _visible(i, j, lq, lk, causal, prefix)
                        if _visible(i, j, lq, lk, causal, prefix):
                            count[i, j] += 1
    assert (count == _visible_matrix(lq, lk, causal, prefix)).all()


def test_varlen_batches_with_one_token_sequences(lib):
    """Each sequence runs the same loops with its own lengths; the grid is sized by the maxima, so
    the short sequences' surplus blocks exit and nothing is visited twice."""
    lengths_q, lengths_k = [1, 7, 64, 1, 130], [1, 3, 127, 9, 1]
    max_q, max_k = max(lengths_q), max(lengths_k)
    for causal in (0, 1):
        for lq, lk in zip(lengths_q, lengths_k, strict=True):
            fwd = np.zeros((lq, lk), dtype=int)
            for m0 in range(0, max_q, 128):
                if m0 >= lq:
                    continue
                for n0 in range(0, lib.m_fwd_key_end(m0, 128, lq, lk, causal, 0), 64):
                    for i in range(m0, min(m0 + 128, lq)):
                        for j in range(n0, min(n0 + 64, lk)):
                            fwd[i, j] += _visible(i, j, lq, lk, causal)
            bwd = np.zeros((lq, lk), dtype=int)
            for n0 in range(0, max_k, 128):
                if n0 >= lk:
                    continue
                for m0 in range(lib.m_bwd_query_begin(n0, 64, lq, lk, causal, 0), lq, 64):
                    for i in range(m0, min(m0 + 64, lq)):
                        for j in range(n0, min(n0 + 128, lk)):
                            bwd[i, j] += _visible(i, j, lq, lk, causal)
            want = np.array([[_visible(i, j, lq, lk, causal) for j in range(lk)] for i in range(lq)])
            assert (fwd == want).all() and (bwd == want).all()


# ------------------------------------------------------------------------- cross-entropy backward


def _function_body(source: str, signature: str) -> str:
    """The brace-matched body of the C++ function whose definition starts with ``signature``."""
    start = source.index("{", source.index(signature))
    depth = 0
    for i in range(start, len(source)):
        depth += {"{": 1, "}": -1}.get(source[i], 0)
        if depth == 0:
            return source[start : i + 1]
    raise ValueError(f"unbalanced braces after {signature!r}")


def test_linear_cross_entropy_bwd_gemm_work_is_halved_for_sum_and_mean(lib):
    """GEMMs per (row chunk x vocab chunk) block of the csrc cross-entropy backward: binding.cpp
    multiplies each 16-bit d(logits) operand into dhidden and dweight (its at::mm calls, inside
    its loop over the operands, and no other), and cross_entropy_plan.h decides the operands per
    reduction. The issue's before: the hi + lo pair for every reduction, 4 GEMMs per block; now
    2 for sum and mean (the training losses), 4 for none, whose rounding residual keeps the
    gradient within the design's rule (test_linear_cross_entropy_dlogits_numerics.py)."""
    binding = (CSRC / "binding.cpp").read_text()
    bwd = _function_body(binding, "std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_bwd(")
    per_operand = _function_body(bwd, "for (const at::Tensor& dk : d)").count("at::mm(")
    assert per_operand == 2 and bwd.count("at::mm(") == per_operand
    codes = _function_body(binding, "int reduction_code(")
    reductions = {"none": "ptft::kReductionNone", "sum": "1", "mean": "2"}
    for name, code in reductions.items():
        assert f'if (reduction == "{name}") return {code};' in codes
    gemms = {name: per_operand * lib.m_linear_cross_entropy_bwd_operands(code) for name, code in
             (("none", 0), ("sum", 1), ("mean", 2))}  # fmt: skip
    assert gemms == {"none": 4, "sum": 2, "mean": 2}
