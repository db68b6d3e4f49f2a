"""Compile kernels/*.cu to kernels/ptx/*.ptx with pinned NVRTC, check them, and assemble them with ptxas."""
import argparse
import ctypes
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

NVRTC_VERSION = (12, 0)  # nvidia-cuda-nvrtc-cu12==12.0.76
OPTIONS = ["--gpu-architecture=compute_70", "--fmad=false", "--std=c++17"]
PTX_HEADER = [".version 8.0", ".target sm_70"]
ARCHS = ["sm_70", "sm_75", "sm_80", "sm_86", "sm_89", "sm_90"]


def fail(message):
    """Print message to stderr (after what stdout holds so far) and exit 1."""
    sys.stdout.flush()
    print(message, file=sys.stderr)
    sys.exit(1)


def load_nvrtc(toolchain):
    """Load libnvrtc.so.12 (after its builtins library) from a `pip install --target` directory."""
    lib = Path(toolchain) / "nvidia" / "cuda_nvrtc" / "lib"
    builtins = sorted(lib.glob("libnvrtc-builtins.so.*"))
    if not (lib / "libnvrtc.so.12").is_file() or not builtins:
        fail(f"no NVRTC in {lib}: pip install --target {toolchain} nvidia-cuda-nvrtc-cu12==12.0.76")
    ctypes.CDLL(str(builtins[0]), mode=ctypes.RTLD_GLOBAL)
    nvrtc = ctypes.CDLL(str(lib / "libnvrtc.so.12"))
    nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p
    major, minor = ctypes.c_int(), ctypes.c_int()
    check_call(nvrtc, "nvrtcVersion", ctypes.byref(major), ctypes.byref(minor))
    if (major.value, minor.value) != NVRTC_VERSION:
        fail(f"NVRTC {major.value}.{minor.value} in {lib}, want {NVRTC_VERSION[0]}.{NVRTC_VERSION[1]}")
    return nvrtc


def check_call(nvrtc, name, *args):
    """Call an NVRTC function; exit with its error string if it does not return NVRTC_SUCCESS."""
    status = getattr(nvrtc, name)(*args)
    if status != 0:
        fail(f"{name}: {nvrtc.nvrtcGetErrorString(status).decode()}")


def include_options(toolchain, kernels):
    """-I for the kernels' own headers (*.cuh) and, where that wheel is installed, the CUDA runtime's."""
    runtime = Path(toolchain) / "nvidia" / "cuda_runtime" / "include"
    return [f"-I{kernels.resolve()}"] + ([f"-I{runtime}"] if runtime.is_dir() else [])


def read_output(nvrtc, prog, size_fn, get_fn):
    """Read one NUL-terminated NVRTC output (log or PTX) of a program."""
    size = ctypes.c_size_t()
    check_call(nvrtc, size_fn, prog, ctypes.byref(size))
    buf = ctypes.create_string_buffer(size.value)
    check_call(nvrtc, get_fn, prog, buf)
    return buf.value.decode()


def compile_source(nvrtc, source, options):
    """Compile one .cu file to PTX text; print the log and exit 1 if it fails."""
    prog = ctypes.c_void_p()
    code = source.read_bytes()
    check_call(nvrtc, "nvrtcCreateProgram", ctypes.byref(prog), code, source.name.encode(), 0, None, None)
    try:
        opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        status = nvrtc.nvrtcCompileProgram(prog, len(options), opts)
        log = read_output(nvrtc, prog, "nvrtcGetProgramLogSize", "nvrtcGetProgramLog")
        if status != 0:
            fail(f"{source}: {nvrtc.nvrtcGetErrorString(status).decode()}\n{log}")
        return read_output(nvrtc, prog, "nvrtcGetPTXSize", "nvrtcGetPTX")
    finally:
        nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))


def check_header(source, ptx):
    """Exit 1 unless the PTX declares the ISA version and target the drivers from 525 on can JIT."""
    lines = {line.strip() for line in ptx.splitlines()}
    for want in PTX_HEADER:
        if want not in lines:
            fail(f"{source}: PTX lacks '{want}'")


def build(toolchain, kernels, out):
    """Compile every kernels/*.cu (twice, to check determinism) into out/<stem>.ptx."""
    nvrtc = load_nvrtc(toolchain)
    options = OPTIONS + include_options(toolchain, kernels)
    out.mkdir(parents=True, exist_ok=True)
    sources = sorted(kernels.glob("*.cu"))
    if not sources:
        print(f"no .cu files in {kernels}")
    for source in sources:
        ptx = compile_source(nvrtc, source, options)
        if compile_source(nvrtc, source, options) != ptx:
            fail(f"{source}: two compilations gave different PTX")
        check_header(source, ptx)
        (out / f"{source.stem}.ptx").write_bytes(ptx.encode())
        print(f"compiled {source.name} -> {out.name}/{source.stem}.ptx")


def remove_stale(kernels, out):
    """Delete out/*.ptx files whose .cu no longer exists."""
    for ptx in sorted(out.glob("*.ptx")):
        if not (kernels / f"{ptx.stem}.cu").exists():
            ptx.unlink()
            print(f"removed {out.name}/{ptx.name} (no {ptx.stem}.cu)")


def compare(expected, committed):
    """Names of .ptx files that differ between two directories, or exist in only one."""
    names = sorted({p.name for p in expected.glob("*.ptx")} | {p.name for p in committed.glob("*.ptx")})
    differ = []
    for name in names:
        a, b = expected / name, committed / name
        if not (a.exists() and b.exists() and a.read_bytes() == b.read_bytes()):
            differ.append(name)
    return differ


def check(toolchain, kernels, out):
    """Exit 1 unless out/*.ptx is exactly what kernels/*.cu compiles to."""
    with tempfile.TemporaryDirectory() as tmp:
        build(toolchain, kernels, Path(tmp) / "ptx")
        differ = compare(Path(tmp) / "ptx", out)
    for name in differ:
        print(f"differs: {out.name}/{name}")
    if differ:
        fail(f"{len(differ)} PTX file(s) out of date: run python {Path(__file__).name} --toolchain DIR")
    print(f"{out.name}/ is up to date")


def find_ptxas(toolchain):
    """Path of ptxas in a `pip install --target` directory of nvidia-cuda-nvcc-cu12, made executable."""
    ptxas = Path(toolchain) / "nvidia" / "cuda_nvcc" / "bin" / "ptxas"
    if not ptxas.is_file():
        fail(f"no ptxas at {ptxas}: pip install --target {toolchain} nvidia-cuda-nvcc-cu12==12.0.76")
    if not os.access(ptxas, os.X_OK):
        ptxas.chmod(ptxas.stat().st_mode | 0o111)
    return ptxas


def run_ptxas(ptxas, ptx, arch, tmp):
    """Assemble one PTX file for one arch into tmp; the finished process."""
    cubin = Path(tmp) / f"{ptx.stem}.{arch}.cubin"
    return subprocess.run([str(ptxas), f"-arch={arch}", str(ptx), "-o", str(cubin)], capture_output=True, text=True)


def assemble(toolchain, out):
    """Assemble every out/*.ptx for each arch in ARCHS (in parallel); exit 1 if any fails."""
    ptxas = find_ptxas(toolchain)
    jobs = [(ptx, arch) for ptx in sorted(out.glob("*.ptx")) for arch in ARCHS]
    if not jobs:
        print(f"no .ptx files in {out}")
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor() as pool:
        results = list(pool.map(lambda job: run_ptxas(ptxas, *job, tmp), jobs))
    for (ptx, arch), result in zip(jobs, results):
        print(f"ptxas {arch} {out.name}/{ptx.name}: {'ok' if result.returncode == 0 else 'FAILED'}")
        if result.stderr.strip():
            print(result.stderr.rstrip())
    failed = sum(result.returncode != 0 for result in results)
    if failed:
        fail(f"ptxas failed {failed} time(s)")


def parse_args():
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__)
    here = Path(__file__).resolve().parent
    parser.add_argument("--toolchain", metavar="DIR", help="pip --target dir of the NVRTC (+ runtime) wheels")
    parser.add_argument("--check", action="store_true", help="compare with the committed PTX instead of writing it")
    parser.add_argument("--ptxas", metavar="DIR2", help="pip --target dir of nvidia-cuda-nvcc-cu12: assemble the PTX")
    parser.add_argument("--kernels-dir", type=Path, default=here, help="folder of the .cu files (default: %(default)s)")
    args = parser.parse_args()
    if not args.toolchain and not args.ptxas:
        parser.error("give --toolchain DIR and/or --ptxas DIR2")
    if args.check and not args.toolchain:
        parser.error("--check needs --toolchain DIR")
    return args


def main():
    """Build or check the PTX, then assemble it, as the arguments ask."""
    args = parse_args()
    kernels = args.kernels_dir
    out = kernels / "ptx"
    if args.check:
        check(args.toolchain, kernels, out)
    elif args.toolchain:
        build(args.toolchain, kernels, out)
        remove_stale(kernels, out)
    if args.ptxas:
        assemble(args.ptxas, out)


if __name__ == "__main__":
    main()
