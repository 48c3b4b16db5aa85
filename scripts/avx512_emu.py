#!/usr/bin/env python3
"""Run tools/avx512-emu (a freestanding x86-64 program that checks modula-quant's AVX-512
kernels) on an emulated CPU: Bochs's, through the `bochscpu` Python package.

    python3 scripts/avx512_emu.py PROGRAM --expect-vnni yes|no

Loads the program's PT_LOAD segments into guest memory behind a 4-level page table, enters
64-bit user mode at its entry point with rdi = a zeroed report page and SSE/AVX/AVX-512
state enabled (CR4.OSFXSR/OSXMMEXCPT/OSXSAVE, XCR0 = x87|SSE|AVX|opmask|ZMM), runs until
the first exception (the program ends with `hlt`, a #GP in user mode) and reads the
report. Exit status 0 only when the program finished (magic written), saw AVX-512F/BW/VL
(and VNNI exactly when expected), made its comparisons with no failure and passed its
self-check. Which CPU model the emulator runs is decided by the bochscpu build (see
scripts/test-avx512.sh).
"""
import argparse
import os
import struct
import sys

import bochscpu
import bochscpu.cpu
import bochscpu.memory

PAGE = bochscpu.memory.page_size()
MAGIC = 0x4D4F_4455_4C41_3531
REPORT_VA = 0x3000_0000
STACK_VA = 0x2000_0000
STACK_PAGES = 32
PML4_PA = 0x10_0000
FIRST_PA = 0x4000_0000
FIELDS = [
    "magic", "leaf7_ebx", "leaf7_ecx", "cases", "failures", "first_kernel", "first_len",
    "first_got", "first_want", "first_bound", "vnni_ran", "selfcheck", "dispatch",
]
KERNELS = {
    1: "avx512::dot_q8_0_q8_0", 2: "avx512::dot_q4_0_q8_0", 3: "avx512::dot4_q8_0_q8_0",
    4: "avx512::dot4_q4_0_q8_0", 5: "avx512::dot_q8_0_q8_0_vnni",
    6: "avx512::dot_q4_0_q8_0_vnni", 7: "avx512::dot4_q8_0_q8_0_vnni",
    8: "avx512::dot4_q4_0_q8_0_vnni", 9: "avx512::dot_q8_0", 10: "avx512::dot_q4_0",
    11: "avx512::axpy_q8_0", 12: "avx512::axpy_q4_0",
    13: "modula-core linear_mode (quantised activations) at Isa::Avx2 vs Isa::Scalar",
    14: "modula-core linear_mode (f32 activations) at Isa::Avx2 vs Isa::Scalar",
    15: "modula-core linear_mode row 0 vs the AVX-512 kernel it must dispatch to",
    16: "avx512::dequantize_q8_0", 17: "avx512::dequantize_q4_0",
    18: "modula-core widen_row_with at Isa::Avx2 vs the AVX-512 dequantiser",
}


def load_segments(path):
    data = open(path, "rb").read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise SystemExit(f"{path}: not a 64-bit little-endian ELF file")
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    if e_type != 2 or e_machine != 62:
        raise SystemExit(f"{path}: not a static x86-64 executable (type {e_type})")
    entry, phoff = struct.unpack_from("<QQ", data, 24)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    segs = []
    for i in range(phnum):
        p_type, _flags, off, vaddr, _paddr, filesz, memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + i * phentsize
        )
        if p_type == 1:  # PT_LOAD
            segs.append((vaddr, data[off:off + filesz], memsz))
    return entry, segs


class Guest:
    def __init__(self):
        self.pt = bochscpu.memory.PageMapLevel4Table()
        self.next_pa = FIRST_PA
        self.mapped = {}

    def map(self, va):
        va &= ~(PAGE - 1)
        if va in self.mapped:
            return
        hva = bochscpu.memory.allocate_host_page()
        pa = self.next_pa
        self.next_pa += PAGE
        bochscpu.memory.page_insert(pa, hva)
        self.pt.insert(va, pa, 1)
        self.mapped[va] = pa

    def commit(self):
        for hva, gpa in self.pt.commit(PML4_PA):
            bochscpu.memory.page_insert(gpa, hva)
        # fresh pages are not promised to be zero: clear every mapped page
        for va in self.mapped:
            self.write(va, bytes(PAGE))

    def write(self, va, data):
        if data and not bochscpu.memory.virt_write(PML4_PA, va, list(data)):
            raise SystemExit(f"cannot write guest memory at {va:#x}")

    def read(self, va, n):
        return bytes(bochscpu.memory.virt_read(PML4_PA, va, n))


def segment(selector, attr):
    s = bochscpu.Segment()
    s.present = True
    s.selector = selector
    s.base = 0
    s.limit = 0xFFFF_FFFF
    s.attr = attr
    return s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("program")
    ap.add_argument("--expect-vnni", choices=["yes", "no"], required=True)
    ap.add_argument(
        "--expect-dispatch", choices=["none", "bw", "vnni"], default="none",
        help="the AVX-512 sub-level modula-core's dispatch must report (built in)",
    )
    args = ap.parse_args()

    entry, segs = load_segments(args.program)
    sess = bochscpu.Session()

    def missing(gpa):
        raise RuntimeError(f"guest touched unmapped physical page {gpa:#x}")

    sess.missing_page_handler = missing
    guest = Guest()
    for vaddr, _data, memsz in segs:
        for va in range(vaddr & ~(PAGE - 1), vaddr + memsz, PAGE):
            guest.map(va)
    for k in range(STACK_PAGES):
        guest.map(STACK_VA + k * PAGE)
    guest.map(REPORT_VA)
    guest.commit()
    for vaddr, data, _memsz in segs:
        guest.write(vaddr, data)

    st = bochscpu.State()
    bochscpu.cpu.set_long_mode(st)
    st.cr3 = PML4_PA
    cr4 = bochscpu.cpu.ControlRegister(st.cr4)
    cr4.OSFXSR = True
    cr4.OSXMMEXCPT = True
    cr4.OSXSAVE = True
    st.cr4 = int(cr4)
    st.xcr0 = 0xE7  # x87, SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM
    st.mxcsr = 0x1F80
    st.rip = entry
    st.rdi = REPORT_VA
    # as after a call: rsp + 8 is 16-byte aligned
    st.rsp = STACK_VA + STACK_PAGES * PAGE - 8
    st.cs = segment(0x33, 0x22FB)
    data_seg = segment(0x2B, 0xCF3)
    st.ds = st.ss = st.es = st.fs = st.gs = data_seg
    sess.cpu.state = st

    stop = {}

    def exception(s, cpu_id, vector, error_code):
        stop["vector"] = int(vector)
        stop["error"] = int(error_code)
        s.stop()

    hook = bochscpu.Hook()
    hook.exception = exception
    sess.run([hook])
    rip = sess.cpu.state.rip

    rep = dict(zip(FIELDS, struct.unpack(f"<{len(FIELDS)}Q", guest.read(REPORT_VA, 8 * len(FIELDS)))))
    ebx, ecx = rep["leaf7_ebx"], rep["leaf7_ecx"]
    feats = {
        "avx512f": bool(ebx >> 16 & 1),
        "avx512bw": bool(ebx >> 30 & 1),
        "avx512vl": bool(ebx >> 31 & 1),
        "avx512vnni": bool(ecx >> 11 & 1),
    }
    print(f"emulated CPU: {', '.join(k for k, v in feats.items() if v) or 'no AVX-512'}")
    ok = True
    if rep["magic"] != MAGIC:
        print(
            f"FAIL: the program did not finish (exception {stop.get('vector')} at rip "
            f"{rip:#x}; 6 = an instruction this CPU lacks)"
        )
        ok = False
    elif stop.get("vector") != 13:
        print(f"FAIL: stopped by exception {stop.get('vector')} instead of the final hlt")
        ok = False
    want_vnni = args.expect_vnni == "yes"
    if not (feats["avx512f"] and feats["avx512bw"] and feats["avx512vl"]):
        print("FAIL: the emulated CPU lacks AVX-512F/BW/VL")
        ok = False
    if feats["avx512vnni"] != want_vnni or bool(rep["vnni_ran"]) != want_vnni:
        print(f"FAIL: expected VNNI {args.expect_vnni}, CPU says {feats['avx512vnni']}")
        ok = False
    if rep["failures"]:
        f32 = lambda b: struct.unpack("<f", struct.pack("<I", b))[0]
        print(
            f"FAIL: {rep['failures']} of {rep['cases']} comparisons; first: "
            f"{KERNELS.get(rep['first_kernel'], rep['first_kernel'])} over "
            f"{rep['first_len']} blocks: got {f32(rep['first_got'])!r}, reference "
            f"{f32(rep['first_want'])!r}, bound {f32(rep['first_bound'])!r}"
        )
        ok = False
    if rep["magic"] == MAGIC and not rep["selfcheck"]:
        print("FAIL: the self-check did not reject a perturbed result")
        ok = False
    levels = {"none": 0, "bw": 1, "vnni": 2}
    if rep["magic"] == MAGIC and rep["dispatch"] != levels[args.expect_dispatch]:
        print(
            f"FAIL: modula-core's dispatch used AVX-512 level {rep['dispatch']}, expected "
            f"{args.expect_dispatch}"
        )
        ok = False
    if rep["magic"] == MAGIC and rep["cases"] == 0:
        print("FAIL: no comparison ran")
        ok = False
    kernels = "BW and VNNI" if rep["vnni_ran"] else "BW"
    if rep["dispatch"]:
        kernels += f" kernels and modula-core's dispatch ({args.expect_dispatch})"
    else:
        kernels += " kernels"
    print(
        f"{'ok' if ok else 'FAILED'}: {rep['cases']} comparisons of the AVX-512 {kernels} "
        f"with the scalar references, {rep['failures']} failed"
    )
    sys.stdout.flush()
    # the bindings crash while tearing down at interpreter exit: leave directly
    os._exit(0 if ok else 1)


if __name__ == "__main__":
    main()
