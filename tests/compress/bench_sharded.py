"""bench_sharded: the sharded compress step on 1, 2 and 4 ranks of this machine: median
step time, communication payload per step (comm_mb in metrics.jsonl) beside the size of
the compressed model (the all-gather of W_C plus the reduce-scatter of G should be about
twice it), and each rank's peak RSS beside the plan's per-rank total.

  python tests/compress/bench_sharded.py [--build build] [--np 1,2,4] [--sets "k=v,k=v;k=v"]
                                         [shape options of bench_compress]

--sets runs every rank count once per ';'-separated list of config overrides, side by
side (e.g. "backend.overlap_comm=true;backend.overlap_comm=false").
"""
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import bench_compress  # noqa: E402
import pclib  # noqa: E402


def main():
    a = bench_compress.parse({"np": "1,2,4", "sets": ""})
    root, job = bench_compress.make_job(a)
    n_c = (a.layers * (a.dc * a.heads * a.hd * 2 + 2 * a.dc * a.kv * a.hd + 3 * a.dc * a.ffc)
           + 2 * a.vocab * a.dc + (2 * a.layers + 1) * a.dc)
    print(f"shape: base d {a.d} ff {a.ff} x{a.layers} -> d' {a.dc} ff' {a.ffc}; compressed model {n_c} params "
          f"= {n_c * 4 / 1e6:.2f} MB in f32; batch {a.batch} x {a.seq}")
    variants = [[x for x in v.split(",") if x] for v in a.sets.split(";")]
    for np_ in [int(x) for x in a.np.split(",")]:
        for k, sets in enumerate(variants):
            d = os.path.join(root, f"np{np_}-{k}")
            pclib.projcompd(np_, job, f"run.dir={d}", "backend.threads=1", *sets)
            ms = pclib.metrics(d)
            steps = [m for m in ms if "step_time" in m][1:]
            t = statistics.median(m["step_time"] for m in steps)
            comm = statistics.median(m["comm_mb"] for m in steps)
            rss = pclib.peak_rss(d)
            print(f"np {np_} {' '.join(sets)}: step {t:.3f} s, comm {comm:.2f} MB/step = "
                  f"{comm / (n_c * 4 / 1e6):.2f} x compressed model (f32), peak RSS per rank (MiB) {rss}")


if __name__ == "__main__":
    main()
