"""The GPU kit (tests/gpu/kit.sh) is self-contained: packed from this build, it runs a
2-rank compress job on a machine that lacks the project's packages. That machine is
this one with them hidden: in a private mount namespace (unshare -m, root), Open MPI's
and PMIx's trees and every file of libmpi, libopen-rte/pal, libpmix, libhwloc,
libevent, libhdf5, libsz, libaec, libyaml and libcmocka are covered by empty ones.
There the build's own projcompd cannot even load (checked), while the kit's, under the
kit's relocated mpirun, runs the job to the end with the loss and grad-norm curves,
validation losses and fused weights of the same job run by the build outside, bit for
bit (the same programs and OpenBLAS). Skips (77) when not root, where private mount namespaces are refused, or
in a build without CUDA (the kit packs the GPU programs)."""
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pclib  # noqa: E402

HIDE = r"""
set -e
empty=$(mktemp -d)
for d in /usr/lib/x86_64-linux-gnu/openmpi /usr/lib/x86_64-linux-gnu/pmix2 /usr/share/openmpi /etc/openmpi; do
    [ -d "$d" ] && mount --bind "$empty" "$d"
done
for pat in libmpi libopen-rte libopen-pal libpmix libhwloc libevent libhdf5 libsz libaec libyaml libcmocka; do
    for f in /usr/lib/x86_64-linux-gnu/$pat* /lib/x86_64-linux-gnu/$pat*; do
        [ -e "$f" ] || continue
        r=$(readlink -f "$f")
        [ -f "$r" ] && mount --bind /dev/null "$r"
    done
done
for b in orterun orted; do [ -e /usr/bin/$b ] && mount --bind /dev/null "$(readlink -f /usr/bin/$b)"; done
"""


def main():
    kit_sh = os.path.join(pclib.SRC, "tests", "gpu", "kit.sh")
    probe = "d=$(mktemp -d) && mount --bind \"$d\" /tmp && umount /tmp"
    if os.geteuid() != 0 or not shutil.which("unshare") or subprocess.run(
            ["unshare", "-m", "sh", "-c", probe], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode:
        print("kit: needs root and private mount namespaces (unshare -m, mount --bind): skipping")
        sys.exit(77)
    if not os.path.exists(os.path.join(pclib.BUILD, "tests", "gpu", "test_cuda_ops")):
        print("kit: a build without CUDA: skipping")
        sys.exit(77)
    root = pclib.tmpdir("pc-kit-test-")
    tar = os.path.join(root, "gpu-kit.tar.xz")
    env = dict(pclib.env(), PCKIT_TAR=tar, PCKIT_DIR=os.path.join(root, "unpacked"))
    subprocess.run(["bash", kit_sh, "pack", pclib.BUILD], env=env, check=True)
    job = pclib.sharded_job(root)
    ref = pclib.run_job(root, job, "ref", 2)

    inside = os.path.join(root, "inside")
    script = HIDE + f"""
if "{pclib.PROJCOMPD}" --version >/dev/null 2>&1; then echo "the build still loads"; exit 3; fi
bash "{kit_sh}" exec sh -c 'mpirun --oversubscribe -np 2 "$PC_BUILD/daemon/projcompd" --cfg "{job}" \
    --set run.dir="{inside}"'
"""
    p = subprocess.run(["unshare", "-m", "bash", "-c", script], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=600)
    pclib.check(p.returncode == 0, f"kit: the job ran with the system's libraries hidden (status {p.returncode})"
                + ("" if p.returncode == 0 else ":\n" + p.stdout[-3000:]))
    pclib.same_outputs(pclib.run_outputs(inside), pclib.run_outputs(ref), "kit: the kit's run vs the build's")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
