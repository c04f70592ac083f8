/* projcompd: the daemon's entry point. Parses the command line, initialises MPI,
 * loads and validates the job config on every rank, opens the run directory and
 * dispatches to the configured mode.
 *
 * Exit status: 0 success, 1 runtime failure, 2 bad command line or config, 3 stopped by
 * SIGTERM/SIGINT/SIGUSR1 after writing a checkpoint (rerun the same command to resume). A
 * second SIGTERM or SIGINT ends the process at once (status 143 or 130). The eval and importance modes
 * have nothing to checkpoint: SIGTERM ends them at once (143) and SIGUSR1, Slurm's
 * warning before the time limit, is ignored. */
#include <ctype.h>
#include <mpi.h>
#include <signal.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt.h"
#include "plan.h"
#include "trainer.h"

#define MAX_SETS 256
#define PC_MAX_DRY_RANKS 1048576 /* -np of a dry run: ranks the plan lays out (each gets a row) */

static volatile sig_atomic_t g_stop_signal; /* the one thing a signal handler may touch */

static void on_signal(int sig) {
    int asked = g_stop_signal == SIGTERM || g_stop_signal == SIGINT; /* a stop already asked for, not a warning */
    if (sig != SIGUSR1 && asked) _exit(128 + sig);
    if (sig == SIGUSR1 && g_stop_signal) return; /* a warning after a stop: the stop stands */
    g_stop_signal = sig;
}

/* The modes that train checkpoint on SIGTERM/SIGINT (Ctrl-C)/SIGUSR1 (at the next step
 * boundary); the others keep the default actions and let the warning pass. */
static void install_signals(const char *mode) {
    int trains = config_mode_trains(mode);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = trains ? on_signal : SIG_DFL;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = trains ? on_signal : SIG_IGN;
    sigaction(SIGUSR1, &sa, NULL);
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: projcompd --cfg JOB.yaml [--set key.sub=value]...\n"
            "       projcompd --cfg JOB.yaml --dry-run [-np N] [--device-gib G]\n"
            "       projcompd --help | --version\n"
            "\n"
            "Compress a Hugging Face Llama model by Projected Compression (run.mode: compress),\n"
            "or train the baselines (prune, pretrain) and evaluate (eval). Launch one process\n"
            "per GPU (or per CPU rank) with mpirun or srun.\n"
            "\n"
            "  --cfg FILE        job config (YAML), given once; see docs/config.md for every key\n"
            "  --set KEY=VALUE   override one key, e.g. --set train.steps=10 (repeatable, up to 256)\n"
            "  --dry-run         print the sharding plan and per-rank memory for N ranks (default:\n"
            "                    the ranks of this launch) without reading weights, and exit\n"
            "  --device-gib G    with --dry-run: check the largest rank against a device of G GiB\n"
            "                    (exit status 1 and what to change when it does not fit)\n"
            "  --version         print the version\n"
            "  --help            this text\n"
            "\n"
            "exit status: 0 done, 1 runtime failure, 2 bad command line or config,\n"
            "             3 stopped by SIGTERM/SIGINT/SIGUSR1 after a checkpoint (rerun to resume)\n");
}

typedef struct cli {
    const char *cfg;
    int dry_run, dry_np;
    double device_gib;
    const char *sets[MAX_SETS];
    int n_sets;
} cli;

/* --cfg FILE: one, and not empty (an unset $JOB would otherwise run on the defaults). */
static int set_cfg(cli *c, const char *path, int rank) {
    if (c->cfg) {
        if (rank == 0)
            fprintf(stderr, "projcompd: --cfg given twice ('%s', then '%s'): give one job file; override its keys "
                            "with --set\n", c->cfg, path);
        return 2;
    }
    if (!path[0]) {
        if (rank == 0) fprintf(stderr, "projcompd: --cfg names no file (an empty string): give the job file's path\n");
        return 2;
    }
    c->cfg = path;
    return 0;
}

/* --set KEY=VALUE, up to MAX_SETS. */
static int add_set(cli *c, const char *set, int rank) {
    if (c->n_sets == MAX_SETS) {
        if (rank == 0) fprintf(stderr, "projcompd: more than %d --set options\n", MAX_SETS);
        return 2;
    }
    c->sets[c->n_sets++] = set;
    return 0;
}

/* Returns 0 ok, 1 exit-success (help/version), 2 usage error. */
static int parse_cli(int argc, char **argv, cli *c, int rank) {
    memset(c, 0, sizeof *c);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            if (rank == 0) usage(stdout);
            return 1;
        } else if (!strcmp(a, "--version")) {
            if (rank == 0) printf("projcompd %s\n", PC_VERSION);
            return 1;
        } else if (!strcmp(a, "--cfg") || !strcmp(a, "--set")) {
            if (i + 1 >= argc) {
                if (rank == 0) fprintf(stderr, "projcompd: %s needs a value\n", a);
                return 2;
            }
            i++;
            if (!strcmp(a, "--cfg") ? set_cfg(c, argv[i], rank) : add_set(c, argv[i], rank)) return 2;
        } else if (!strcmp(a, "--dry-run")) {
            c->dry_run = 1;
        } else if (!strcmp(a, "-np") || !strcmp(a, "--np")) {
            char *end = NULL;
            long n = i + 1 < argc ? strtol(argv[i + 1], &end, 10) : 0;
            if (i + 1 >= argc || end == argv[i + 1] || *end || n <= 0 || n > PC_MAX_DRY_RANKS) {
                if (rank == 0)
                    fprintf(stderr, "projcompd: %s needs a rank count, a whole number from 1 to %d\n", a,
                            PC_MAX_DRY_RANKS);
                return 2;
            }
            c->dry_np = (int)n;
            i++;
        } else if (!strcmp(a, "--device-gib")) {
            char *end = NULL;
            const char *g = i + 1 < argc ? argv[i + 1] : "";
            /* decimal, as numbers in the job file: strtod alone takes hex ("0x10") and leading spaces */
            int decimal = g[0] && (isdigit((unsigned char)g[0]) || strchr("+-.", g[0])) && !strpbrk(g, "xX");
            c->device_gib = decimal ? strtod(g, &end) : 0;
            if (!decimal || *end || !(c->device_gib > 0 && c->device_gib < 1e9)) {
                if (rank == 0) fprintf(stderr, "projcompd: --device-gib needs a positive number of GiB (below 1e9)\n");
                return 2;
            }
            i++;
        } else if (!strncmp(a, "--set=", 6)) {
            if (add_set(c, a + 6, rank)) return 2;
        } else if (!strncmp(a, "--cfg=", 6)) {
            if (set_cfg(c, a + 6, rank)) return 2;
        } else {
            if (rank == 0) {
                fprintf(stderr, "projcompd: unknown argument '%s'\n", a);
                usage(stderr);
            }
            return 2;
        }
    }
    if (c->device_gib > 0 && !c->dry_run) {
        if (rank == 0) fprintf(stderr, "projcompd: --device-gib goes with --dry-run\n");
        return 2;
    }
    if (c->dry_np > 0 && !c->dry_run) { /* a run has the launcher's ranks */
        if (rank == 0)
            fprintf(stderr, "projcompd: -np goes with --dry-run (a run's rank count is the launcher's: "
                            "mpirun -np N projcompd ...)\n");
        return 2;
    }
    if (!c->cfg) {
        if (rank == 0) {
            fprintf(stderr, "projcompd: --cfg JOB.yaml is required\n");
            usage(stderr);
        }
        return 2;
    }
    return 0;
}

/* What needs the base model's config.json (its widths, the per-layer d_ff list) is
 * checked before any work too, so these mistakes also exit with status 2; so are a
 * pretrain job's model.config, model.config beside model.base, and where the final model
 * would go (run_final_check: not the base, the run directory, nor anything but an
 * earlier output model). */
static int check_against_base(const pc_config *c, pc_err *e) {
    llama_config lc;
    const char *m = c->run.mode;
    char final_dir[1024];
    if (c->model.config[0] && c->model.base[0]) /* one would be ignored */
        return pc_errorf(e, "%s: model.config '%s' and model.base '%s' are both set: the model's shape and weights "
                            "come from model.base (pretrain continues from its weights); model.config is for a "
                            "pretrain from random init. Set one of them (to evaluate or compress a pretrained model "
                            "from its pretrain job file: --set model.config=)",
                         c->source, c->model.config, c->model.base);
    if (config_mode_trains(m) &&
        (run_final_dir(c, final_dir, sizeof final_dir, e) != 0 || run_final_check(c, final_dir, e) != 0))
        return -1;
    /* (loading validates the config) */
    if (!c->model.base[0]) /* pretrain: the shape from model.config, when set */
        return c->model.config[0] ? hf_config_load_file(c->model.config, &lc, e) : 0;
    if (hf_config_load(c->model.base, &lc, e) != 0) return -1;
    if (strcmp(m, "compress") && strcmp(m, "prune") && strcmp(m, "importance")) return 0;
    return config_check_model(c, lc.d_model, lc.d_ff_layer, lc.n_layers, e);
}

/* Every rank's verdict on the job (bad: its config or base check failed, e set), and that
 * the ranks were given the same job: before any collective of the run, so that one
 * rank's error ends every rank (it would otherwise wait for it in the first collective)
 * and ranks given different configs (an MPMD launch, a --set per rank) do not train
 * together. Prints the error once (rank 0's, else each failing rank's); -1: exit 2. */
static int ranks_agree(run_ctx *r, int bad, pc_err *e) {
    int flags[2] = {bad, r->rank == 0 && bad}, any[2];
    MPI_Allreduce(flags, any, 2, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (any[0]) {
        if (bad && r->rank == 0) fprintf(stderr, "projcompd: error: %s\n", e->msg);
        if (bad && r->rank != 0 && !any[1]) fprintf(stderr, "projcompd: rank %d: error: %s\n", r->rank, e->msg);
        return -1;
    }
    char *text = config_resolved_text(&r->cfg);
    const char *job = strstr(text, "\nrun:"); /* the keys, not the comment naming the job file */
    unsigned long long mine = ckpt_xxh64(job ? job : text, strlen(job ? job : text), 0);
    free(text);
    unsigned long long *all = pc_malloc(sizeof *all * (size_t)r->world);
    MPI_Allgather(&mine, 1, MPI_UNSIGNED_LONG_LONG, all, 1, MPI_UNSIGNED_LONG_LONG, MPI_COMM_WORLD);
    int other = -1;
    for (int i = 1; i < r->world && other < 0; i++)
        if (all[i] != all[0]) other = i;
    free(all);
    if (other < 0) return 0;
    if (r->rank == 0)
        fprintf(stderr,
                "projcompd: error: rank %d was given another job than rank 0 (their resolved configs differ): launch "
                "every rank with the same --cfg and --set options\n",
                other);
    return -1;
}

/* Rank 0 warns of keys the mode takes and does nothing with (kept accepted, so that one
 * job file serves its eval and importance runs through --set run.mode=...). */
static void warn_unused_keys(run_ctx *r) {
    const pc_config *c = &r->cfg;
    if (r->rank != 0) return;
    if (c->distill.enabled && !config_mode_trains(c->run.mode))
        LOGW(&r->log, "distill.enabled: run.mode %s takes no training step, so distillation does nothing here",
             c->run.mode);
    if (c->compress.shard_grads && (!strcmp(c->run.mode, "prune") || !strcmp(c->run.mode, "pretrain")))
        LOGW(&r->log, "compress.shard_grads applies to run.mode compress: %s all-reduces whole gradients",
             c->run.mode);
}

static int dispatch(run_ctx *r, pc_err *e) {
    const char *mode = r->cfg.run.mode;
    warn_unused_keys(r);
    if (config_mode_trains(mode)) return mode_train(r, e);
    if (!strcmp(mode, "importance")) return mode_importance(r, e);
    if (!strcmp(mode, "eval")) return mode_eval(r, e);
    return pc_errorf(e, "%s: run.mode '%s' is not available in this build", r->cfg.source, mode);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank = 0, world = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);

    cli c;
    int rc = parse_cli(argc, argv, &c, rank);
    if (rc != 0) {
        MPI_Finalize();
        return rc == 1 ? 0 : 2;
    }

    static run_ctx r; /* large (config tables); lives for the whole process */
    pc_err e = {{0}};
    r.rank = rank;
    r.world = world;
    r.t_start = pc_now();
    r.stop_flag = &g_stop_signal;
    if (c.dry_run) { /* the plan for N ranks, from config.json alone */
        int n = c.dry_np > 0 ? c.dry_np : world, fits = 1;
        rc = 0;
        if (rank == 0 && (config_load(&r.cfg, c.cfg, c.sets, c.n_sets, &e) != 0 ||
                          config_check_ranks(&r.cfg, n, &e) != 0 || check_against_base(&r.cfg, &e) != 0 ||
                          plan_dry_run(&r.cfg, n, c.device_gib, stdout, &fits, &e) != 0)) {
            fprintf(stderr, "projcompd: error: %s\n", e.msg);
            rc = 2;
        } else if (rank == 0 && !fits) {
            fprintf(stderr, "projcompd: %s\n", e.msg);
            rc = 1;
        }
        MPI_Finalize();
        return rc;
    }
    int bad = config_load(&r.cfg, c.cfg, c.sets, c.n_sets, &e) != 0 || config_check_ranks(&r.cfg, world, &e) != 0 ||
              check_against_base(&r.cfg, &e) != 0;
    if (ranks_agree(&r, bad, &e) != 0) {
        MPI_Finalize();
        return 2;
    }

    install_signals(r.cfg.run.mode);
    signal(SIGXFSZ, SIG_IGN); /* a write past the file size limit fails (EFBIG) and is reported, naming the file */

    if (run_open(&r, &e) != 0) {
        if (r.log.file) /* its log (and stderr), once it is open */
            LOGE(&r.log, "%s", e.msg);
        else
            fprintf(stderr, "projcompd: rank %d: error: %s\n", rank, e.msg);
        MPI_Abort(MPI_COMM_WORLD, 1);
        return 1;
    }
    rc = dispatch(&r, &e);
    if (rc == 1) { /* stopped by a signal, checkpoint written */
        run_close(&r);
        MPI_Finalize();
        return 3;
    }
    if (rc != 0) {
        LOGE(&r.log, "%s", e.msg);
        log_close(&r.log);
        /* peers may be inside a collective: take the whole job down rather than hang */
        MPI_Abort(MPI_COMM_WORLD, 1);
        return 1;
    }
    LOGI(&r.log, "done in %.1f s", pc_now() - r.t_start);
    run_close(&r);
    MPI_Finalize();
    return 0;
}
