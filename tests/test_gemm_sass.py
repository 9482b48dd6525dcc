"""The device code the build put into fastgpt._C, read back with cuobjdump (shipped with Triton).

Every Hopper GEMM must be the TMA + wgmma kind (HGMMA, UTMALDG in its sm_90a SASS), every
Ampere-path GEMM the cp.async + ldmatrix + mma.sync kind (HMMA, LDGSTS, LDSM in its sm_80
SASS); none may spill or call a subroutine (64-bit integer division compiles to one); and each
kernel is a trap-only stub in the other architecture's code, which is never launched there.
"""
import os
import re
import shutil
import subprocess
from collections import defaultdict

import pytest

_C = pytest.importorskip("fastgpt._C")
if not (_C.cuda_built() and hasattr(_C, "_kernel_names")):
    pytest.skip("fastgpt._C was built without its CUDA part", allow_module_level=True)


def _cuobjdump():
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return path if os.path.exists(path) else shutil.which("cuobjdump")


@pytest.fixture(scope="module")
def sass():
    """{arch: {mangled function name: SASS text}} of the extension."""
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found")
    text = subprocess.run([tool, "-sass", _C.__file__], capture_output=True, text=True, check=True).stdout
    out, arch, name = defaultdict(dict), None, None
    for line in text.splitlines():
        m = re.search(r"code for (sm_\w+)", line)
        if m:
            arch, name = m.group(1), None
            continue
        m = re.search(r"Function : (\S+)", line)
        if m:
            name = m.group(1)
            out[arch][name] = ""
        elif name is not None:
            out[arch][name] += line + "\n"
    return out


@pytest.fixture(scope="module")
def resources():
    """{(arch, mangled function name): {'REG': .., 'STACK': .., 'LOCAL': ..}}."""
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found")
    text = subprocess.run([tool, "--dump-resource-usage", _C.__file__], capture_output=True, text=True, check=True).stdout
    out, arch = {}, None
    for m in re.finditer(r"arch = (sm_\w+)|Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", text):
        if m.group(1):
            arch = m.group(1)
        else:
            out[(arch, m.group(2))] = {"REG": int(m.group(3)), "STACK": int(m.group(4)), "LOCAL": int(m.group(6))}
    return out


def _function(functions, tag):
    found = [name for name in functions if re.search(rf"\d{tag}E", name) or tag in name]
    assert len(found) == 1, f"expected one function tagged {tag}, found {found}"
    return found[0]


FAMILIES = {90: ("sm_90a", ["HGMMA", "UTMALDG"]), 80: ("sm_80", ["HMMA", "LDGSTS", "LDSM"])}


@pytest.mark.parametrize("family", [90, 80])
def test_each_gemm_uses_its_architectures_tensor_core_path(family, sass, resources):
    arch, required = FAMILIES[family]
    other = FAMILIES[80 if family == 90 else 90][0]
    assert arch in sass, f"no {arch} code in the extension (archs: {sorted(sass)})"
    names = _C._kernel_names(family)
    # QKV fwd, dx, dweight; c_fc erf, tanh; the MLP backward's dGELU erf, tanh; each in fp16 and bf16
    assert len(names) == 14, names
    for tag in names:
        fn = _function(sass[arch], tag)
        code = sass[arch][fn]
        for op in required:
            assert re.search(rf"\b{op}\b", code), f"{tag}: no {op} in its {arch} SASS"
        calls = re.findall(r"CALL\S*\s+[^;]*", code)
        assert not calls, f"{tag}: calls a subroutine (64-bit division?): {calls[:3]}"
        usage = resources[(arch, fn)]
        assert usage["STACK"] == 0 and usage["LOCAL"] == 0, f"{tag} spills on {arch}: {usage}"
        # The other architecture's copy is the trap stub the launchers never reach.
        if other in sass:
            stub = sass[other][_function(sass[other], tag)]
            assert "BPT.TRAP" in stub and not re.search(r"\b(HGMMA|HMMA|UTMALDG|LDGSTS)\b", stub), \
                f"{tag}: its {other} copy is not a trap stub"
