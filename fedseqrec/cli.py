"""The ``fedseqrec`` command.

Conventions every subcommand keeps: ``--data NAME_OR_PATH`` (default: the built-in ``shop``) with ``--format``,
``--seed``, and ``--out DIR`` for the folder a command writes to. Bad input prints one line and exits 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from fedseqrec import __version__
from fedseqrec.data.dataset import DataConfig
from fedseqrec.data.eventlog import PRESETS
from fedseqrec.data.formats import FORMATS
from fedseqrec.data.parsing import TIME_UNITS
from fedseqrec.data.partition import SCHEMES
from fedseqrec.data.shop import ShopConfig
from fedseqrec.data.splits import SPLITS
from fedseqrec.errors import RunError, UserError
from fedseqrec.evaluation.protocols import PROTOCOLS
from fedseqrec.models.config import MODEL_NAMES, ModelConfig, TrainConfig

Handler = Callable[[argparse.Namespace], int]


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows every option's default, except where the help text already explains it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        hidden = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "default" in text or hidden or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _debug_option(parser: argparse.ArgumentParser, top: bool) -> None:
    # On subcommands the default is suppressed so `fedseqrec --debug data stats` is not reset by the subparser.
    parser.add_argument(
        "--debug",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="show the full traceback on errors",
    )


def add_data_options(parser: argparse.ArgumentParser, truncate: bool = True) -> None:
    """``--data`` and friends: which log to read, how to clean it, how to split it.

    ``truncate``: offer ``--max-len`` to cut the data itself; training commands use it for the model's window."""
    g = parser.add_argument_group("data")
    g.add_argument(
        "--data",
        default="shop",
        metavar="NAME_OR_PATH",
        help="built-in dataset (shop) or a file/folder: RecBole atomic files, MovieLens, CSV/TSV/Parquet "
        "event log, or a folder written by `fedseqrec data prepare`",
    )
    g.add_argument("--format", default="auto", choices=FORMATS, help=f"layout of --data; presets: {', '.join(PRESETS)}")
    g.add_argument("--seed", type=int, default=0, help="seed for generated data and partitions")
    g.add_argument(
        "--columns",
        default=None,
        metavar="ROLE=COL,...",
        help="column mapping for generic logs, e.g. user=visitorid,item=itemid,timestamp=ts,event=type "
        "(roles: user, item, timestamp, event, rating, query)",
    )
    g.add_argument("--sep", default=None, help="field separator of a text log (default: from the file)")
    g.add_argument(
        "--time-unit",
        default="auto",
        choices=TIME_UNITS,
        help="unit of numeric timestamps (auto: milliseconds when values exceed 1e11)",
    )
    c = parser.add_argument_group("cleaning")
    c.add_argument(
        "--min-rating",
        type=float,
        default=None,
        help="keep interactions rated at least this (implicit feedback); default keeps all",
    )
    c.add_argument(
        "--k-core",
        type=int,
        default=0,
        metavar="K",
        help="k-core filter on users and items, iterated to a fixed point (0 = off)",
    )
    c.add_argument("--user-core", type=int, default=None, help="k-core threshold for users only (overrides --k-core)")
    c.add_argument("--item-core", type=int, default=None, help="k-core threshold for items only (overrides --k-core)")
    if truncate:
        c.add_argument("--max-len", type=int, default=None, help="keep each user's most recent N events")
    s = parser.add_argument_group("split")
    s.add_argument("--split", default="leave-one-out", choices=SPLITS, help="evaluation split")
    s.add_argument("--valid-quantile", type=float, default=0.8, help="temporal split: validation cut")
    s.add_argument("--test-quantile", type=float, default=0.9, help="temporal split: test cut")
    shop = ShopConfig()
    d = parser.add_argument_group("built-in shop data")
    d.add_argument("--shop-users", type=int, default=shop.users, help="users to generate")
    d.add_argument("--shop-items", type=int, default=shop.items, help="items in the catalogue")
    d.add_argument("--shop-categories", type=int, default=shop.categories, help="item categories")
    d.add_argument("--shop-days", type=int, default=shop.days, help="days of behaviour")


def add_partition_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("client partition")
    g.add_argument("--partition", default=None, choices=SCHEMES, help="split users into federated clients")
    g.add_argument("--clients", type=int, default=None, metavar="K", help="number of clients (silos)")
    g.add_argument("--alpha", type=float, default=0.5, help="dirichlet concentration (smaller = more skewed)")
    g.add_argument(
        "--attribute",
        default=None,
        metavar="COLUMN[:PREFIX]",
        help="attribute partition: user feature, e.g. region, occupation, zip_code:1 "
        "(default: the first of region, occupation, zip_code)",
    )
    g.add_argument(
        "--category",
        default=None,
        metavar="COLUMN",
        help="dirichlet partition: item feature holding the category or genre (default: detected)",
    )


def data_config(args: argparse.Namespace, truncate_data: bool = True) -> DataConfig:
    user_core = args.user_core if args.user_core is not None else args.k_core
    item_core = args.item_core if args.item_core is not None else args.k_core
    return DataConfig(
        data=args.data,
        format=args.format,
        seed=args.seed,
        columns=args.columns,
        sep=args.sep,
        time_unit=args.time_unit,
        min_rating=args.min_rating,
        user_core=user_core,
        item_core=item_core,
        max_len=args.max_len if truncate_data else None,
        split=args.split,
        valid_quantile=args.valid_quantile,
        test_quantile=args.test_quantile,
        partition=getattr(args, "partition", None),
        clients=getattr(args, "clients", None),
        alpha=getattr(args, "alpha", 0.5),
        attribute=getattr(args, "attribute", None),
        category=getattr(args, "category", None),
        shop=ShopConfig(
            users=args.shop_users, items=args.shop_items, categories=args.shop_categories, days=args.shop_days
        ),
    )


def cmd_data_stats(args: argparse.Namespace) -> int:
    from fedseqrec.data.dataset import load_dataset
    from fedseqrec.data.stats import dataset_stats, format_stats

    stats = dataset_stats(load_dataset(data_config(args)))
    print(json.dumps(stats, indent=None if args.compact else 2) if args.json else format_stats(stats))
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from fedseqrec.data.prepare import prepare
    from fedseqrec.data.stats import format_stats

    stats = prepare(data_config(args), Path(args.out))
    print(format_stats(stats))
    print(f"prepared dataset written to {Path(args.out).resolve()}")
    return 0


def cmd_data_export(args: argparse.Namespace) -> int:
    from fedseqrec.data.export import export_partitions

    out = Path(args.out).resolve()
    summary = export_partitions(data_config(args), out)
    for client in summary["clients"]:
        print(
            f"{out / client['folder']}  client {client['name']}: {client['users']} users, "
            f"{client['interactions']} interactions"
        )
    print(f"{out / summary['server']}  the server: item vocabulary only (run with evaluation = federated)")
    print(f"{summary['num_partitions']} client folders written to {out} (index: {out / 'export.json'})")
    return 0


def add_model_options(parser: argparse.ArgumentParser) -> None:
    m = parser.add_argument_group("model")
    defaults = ModelConfig()
    m.add_argument("--model", default="sasrec", choices=MODEL_NAMES, help="sequence recommender (pop: baseline)")
    m.add_argument("--hidden", type=int, default=defaults.hidden, help="embedding and hidden size")
    m.add_argument("--layers", type=int, default=defaults.layers, help="Transformer blocks or recurrent layers")
    m.add_argument("--heads", type=int, default=defaults.heads, help="attention heads (sasrec, bert4rec)")
    m.add_argument("--inner", type=int, default=defaults.inner, help="feed-forward width (sasrec, bert4rec)")
    m.add_argument("--dropout", type=float, default=defaults.dropout, help="dropout probability")
    m.add_argument(
        "--max-len",
        type=int,
        default=defaults.max_len,
        help="window of most recent events the model sees (one training example per user)",
    )
    m.add_argument(
        "--no-side-info",
        dest="side_info",
        action="store_false",
        help="no event-type and time-gap embeddings (default: use them where the data has them)",
    )
    m.add_argument("--mask-ratio", type=float, default=defaults.mask_ratio, help="bert4rec: share of items masked")
    m.add_argument(
        "--loss",
        default=defaults.loss,
        choices=("ce", "sampled"),
        help="full softmax cross-entropy, or sampled negatives for very large catalogues",
    )
    m.add_argument("--negatives", type=int, default=defaults.negatives, help="sampled loss: negatives per batch")
    m.add_argument(
        "--label-smoothing", type=float, default=defaults.label_smoothing, help="label smoothing of the cross-entropy"
    )


def model_config(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(
        hidden=args.hidden,
        layers=args.layers,
        heads=args.heads,
        inner=args.inner,
        dropout=args.dropout,
        max_len=args.max_len,
        side_info=args.side_info,
        mask_ratio=args.mask_ratio,
        loss=args.loss,
        negatives=args.negatives,
        label_smoothing=args.label_smoothing,
    )


def add_training_options(parser: argparse.ArgumentParser) -> None:
    t = parser.add_argument_group("training")
    d = TrainConfig()
    t.add_argument("--epochs", type=int, default=d.epochs, help="most epochs to train")
    t.add_argument("--batch-size", type=int, default=d.batch_size, help="users per batch")
    t.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate")
    t.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    t.add_argument(
        "--patience",
        type=int,
        default=d.patience,
        help="stop after this many evaluations without a better validation NDCG@10",
    )
    t.add_argument("--eval-every", type=int, default=d.eval_every, help="validate every N epochs")
    t.add_argument(
        "--window",
        default="random" if d.random_window else "recent",
        choices=("random", "recent"),
        help="training window per user and epoch: a random stretch of a long history, or the most recent",
    )
    t.add_argument("--max-seconds", type=float, default=None, help="stop after this much training time")
    t.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (0: torch's default)")
    t.add_argument(
        "--protocol",
        default=d.eval_protocol,
        choices=PROTOCOLS,
        help="evaluation: full ranking, or 100 sampled negatives (labelled in the results)",
    )


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        patience=args.patience,
        eval_every=args.eval_every,
        random_window=args.window == "random",
        max_seconds=args.max_seconds,
        threads=args.threads,
        eval_protocol=args.protocol,
    )


def cmd_train(args: argparse.Namespace) -> int:
    from fedseqrec.centralized import train_centralized

    out = Path(args.out or f"runs/train-{args.model}")
    results = train_centralized(data_config(args, truncate_data=False), model_config(args), train_config(args), out)
    test, valid = results["test"], results["valid"]
    print(
        f"{args.model}: test NDCG@10 {test['NDCG@10']:.4f}  HR@10 {test['HR@10']:.4f}  MRR@10 {test['MRR@10']:.4f}"
        f"  (valid NDCG@10 {valid['NDCG@10']:.4f}; {results['params']:,} parameters, "
        f"{results['train_seconds']:.1f} s training)"
    )
    print(f"results in {out.resolve()}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fedseqrec.data.dataset import load_dataset
    from fedseqrec.evaluation.evaluator import evaluate
    from fedseqrec.models.checkpoint import load_checkpoint

    ds = load_dataset(data_config(args, truncate_data=False))
    name, model = load_checkpoint(Path(args.checkpoint), ds.sequences)
    options = {"max_len": model.cfg.max_len, "protocol": args.protocol}
    results = {
        "model": name,
        "protocol": args.protocol,
        "valid": evaluate(model, ds.sequences, ds.split, "valid", **options),
        "test": evaluate(model, ds.sequences, ds.split, "test", **options),
    }
    print(json.dumps(results, indent=2))
    return 0


def add_federation_options(parser: argparse.ArgumentParser) -> None:
    from fedseqrec.runconfig import EVALUATIONS, STRATEGIES, FederationConfig

    d = FederationConfig()
    f = parser.add_argument_group("federation")
    f.add_argument("--strategy", default=d.strategy, choices=STRATEGIES, help="aggregation strategy")
    f.add_argument("--rounds", type=int, default=None, help=f"federated rounds (default: {d.rounds})")
    f.add_argument("--clients-per-round", type=int, default=None, help="clients sampled per round (default: all)")
    f.add_argument(
        "--min-clients", type=int, default=d.min_clients, help="fewer successful clients in a round stops the run"
    )
    f.add_argument("--round-timeout", type=float, default=None, help="seconds to wait for replies (default: no limit)")
    f.add_argument("--proximal-mu", type=float, default=d.proximal_mu, help="fedprox: weight of the proximal term")
    f.add_argument(
        "--server-lr",
        type=float,
        default=None,
        help="server learning rate: eta of fedadam/fedyogi/fedadagrad (default 0.01), fedavgm (default 1.0)",
    )
    f.add_argument("--server-momentum", type=float, default=d.server_momentum, help="fedavgm: server momentum")
    f.add_argument("--beta-1", type=float, default=d.beta_1, help="fedadam/fedyogi: first-moment decay")
    f.add_argument("--beta-2", type=float, default=d.beta_2, help="fedadam/fedyogi: second-moment decay")
    f.add_argument("--tau", type=float, default=d.tau, help="fedadam/fedyogi/fedadagrad: adaptivity")
    t = parser.add_argument_group("local training (at each client)")
    t.add_argument("--local-epochs", type=int, default=d.local_epochs, help="passes over the client's users per round")
    t.add_argument("--local-steps", type=int, default=None, help="steps per round instead of --local-epochs")
    t.add_argument("--batch-size", type=int, default=d.batch_size, help="users per batch")
    t.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate")
    t.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    t.add_argument("--window", default=d.window, choices=("random", "recent"), help="training window per user")
    t.add_argument("--threads", type=int, default=d.threads, help="torch threads per client")
    e = parser.add_argument_group("evaluation")
    e.add_argument(
        "--evaluation",
        default=d.evaluation,
        choices=EVALUATIONS,
        help="centralized (server holds every user's held-out events) or federated (clients evaluate their own)",
    )
    e.add_argument("--eval-every", type=int, default=d.eval_every, help="validate every N rounds")
    e.add_argument("--fraction-evaluate", type=float, default=d.fraction_evaluate, help="federated: clients asked")
    e.add_argument("--protocol", default=d.protocol, choices=PROTOCOLS, help="ranking protocol")
    add_privacy_options(parser)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """What a federated run is made of: data, partition (IID by default), model, federation and privacy."""
    add_data_options(parser, truncate=False)
    add_partition_options(parser)
    parser.set_defaults(partition="iid")
    add_model_options(parser)
    add_federation_options(parser)


def add_privacy_options(parser: argparse.ArgumentParser) -> None:
    from fedseqrec.privacy.accounting import ACCOUNTANTS
    from fedseqrec.runconfig import FederationConfig

    d = FederationConfig()
    p = parser.add_argument_group("differential privacy (DP-SGD at each client; the privacy unit is one user)")
    p.add_argument("--dp", action="store_true", help="train every client with DP-SGD (implied by the next two)")
    p.add_argument(
        "--epsilon", type=float, default=None, help="target ε per client for the whole run: the noise is calibrated"
    )
    p.add_argument("--noise-multiplier", type=float, default=None, help="noise multiplier σ instead of --epsilon")
    p.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm, help="per-user gradient clipping norm")
    p.add_argument("--delta", type=float, default=None, help="δ (default: min(1e-5, 0.1 / users in the client))")
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="ε a client may spend; it declines rounds beyond (default: --epsilon)",
    )
    p.add_argument("--accountant", default=d.accountant, choices=ACCOUNTANTS, help="Opacus accountant for ε")
    p.add_argument(
        "--grad-sample-mode",
        default=d.grad_sample_mode,
        choices=("auto", "ghost", "hooks"),
        help="Opacus per-sample gradients: auto = ghost clipping for sasrec/bert4rec, hooks for gru4rec/lstm",
    )
    c = parser.add_argument_group("central differential privacy (DP-FedAvg; one user per client: --partition per-user)")
    c.add_argument(
        "--central-dp", default=None, choices=("fixed", "adaptive"), help="clip client updates, noise the sum"
    )
    c.add_argument("--central-noise", type=float, default=None, help="noise multiplier z of the aggregate")
    c.add_argument("--clipping-norm", type=float, default=d.clipping_norm, help="update norm (adaptive: initial)")
    c.add_argument(
        "--central-clipping", default=d.central_clipping, choices=("server", "client"), help="where updates are clipped"
    )
    c.add_argument("--target-quantile", type=float, default=d.target_quantile, help="adaptive: unclipped share")
    c.add_argument("--clip-lr", type=float, default=d.clip_lr, help="adaptive: clipping norm learning rate")


def federation_config(args: argparse.Namespace):
    from dataclasses import fields

    from fedseqrec.runconfig import FederationConfig

    data = data_config(args, truncate_data=False)
    clients = data.clients
    if clients is None and data.partition in ("iid", "dirichlet"):
        clients = DEFAULT_SIMULATED_CLIENTS
    values = {**vars(args), **{k: v for k, v in vars(data).items() if k not in ("shop", "max_len")}}
    values.update(model_config(args).to_dict())
    values.update(
        dp=args.dp or args.epsilon is not None or args.noise_multiplier is not None,
        clients=clients,
        shop_users=data.shop.users,
        shop_items=data.shop.items,
        shop_categories=data.shop.categories,
        shop_days=data.shop.days,
        rounds=args.rounds if args.rounds is not None else FederationConfig.rounds,
        out=args.out,
    )
    return FederationConfig(**{f.name: values[f.name] for f in fields(FederationConfig) if f.name in values})


DEFAULT_SIMULATED_CLIENTS = 5


def cmd_simulate(args: argparse.Namespace) -> int:
    from fedseqrec.server.federation import Progress, format_round
    from fedseqrec.simulation.engine import simulate

    cfg = federation_config(args)
    total = {"rounds": cfg.rounds}

    def on_round(record: dict) -> None:
        print(format_round(record, total["rounds"]), flush=True)

    resume = Path(args.resume) if args.resume else None
    if resume is not None and args.rounds is not None:
        total["rounds"] = args.rounds
    results, folder = simulate(
        cfg,
        out=Path(args.out) if args.out else None,
        resume=resume,
        rounds=args.rounds if resume is not None else None,
        client_cpus=args.client_cpus,
        progress=Progress(on_round=on_round, on_message=lambda text: print(text, flush=True)),
        verbose=args.verbose,
    )
    print_results(results, folder.path)
    return 0


def print_results(results: dict, folder: Path) -> None:
    from fedseqrec.server.federation import summary_table
    from fedseqrec.server.rundir import RunFolder

    test = results["test"]
    print()
    print(summary_table(RunFolder(folder).rounds()))
    print()
    print(
        f"{results['model']} / {results['strategy']}: best round {results['best_round']} of {results['rounds_run']}: "
        f"test NDCG@10 {test['NDCG@10']:.4f}  HR@10 {test['HR@10']:.4f}  MRR@10 {test['MRR@10']:.4f}"
    )
    print(f"run folder: {folder.resolve()}")


def cmd_deploy_local(args: argparse.Namespace) -> int:
    from fedseqrec.deployment.runner import deploy_local
    from fedseqrec.server.server_app import default_run_folder

    cfg = federation_config(args)
    out = Path(args.out) if args.out else Path("runs") / f"deploy-{default_run_folder(cfg).name}"
    results = deploy_local(
        cfg,
        out,
        secure=not args.insecure,
        isolation=args.isolation,
        on_line=lambda line: print(line, flush=True),
        verbose=args.verbose,
        timeout=args.timeout,
    )
    print_results(results, out)
    return 0


def cmd_deploy_app(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from fedseqrec.deployment.local import write_app

    cfg = federation_config(args)
    if args.out is not None and not Path(args.out).is_absolute():
        raise UserError(f"--out {args.out}: give an absolute path: the ServerApp runs on the SuperLink's host")
    if cfg.data != "shop" and not Path(cfg.data).is_absolute():
        raise UserError(f"--data {cfg.data}: give an absolute path: the ServerApp reads it on the SuperLink's host")
    cfg.validate()
    app = Path(args.app)
    if app.exists() and any(p.name != "pyproject.toml" for p in app.iterdir()):
        raise UserError(f"{app}: exists and holds more than an app's pyproject.toml; choose an empty folder")
    write_app(app, replace(cfg, out=args.out).to_run_config())
    print(f"Flower App written to {(app / 'pyproject.toml').resolve()}")
    print(f"run it with: flwr run {app} CONNECTION --stream")
    return 0


def cmd_deploy_credentials(args: argparse.Namespace) -> int:
    from fedseqrec.deployment.credentials import make_certificates, make_node_key

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise UserError(f"--out {out}: folder is not empty; refusing to overwrite keys (use --force)")
    certs = make_certificates(out, args.hosts)
    print(f"CA certificate (every SuperNode and the flwr CLI): {certs.ca.resolve()}")
    print(
        f"SuperLink certificate and key:                    {certs.server_cert.resolve()}, {certs.server_key.resolve()}"
    )
    for node in range(args.nodes):
        public = make_node_key(out / f"node-{node:03d}")
        print(f"SuperNode {node} key pair: {public.with_suffix('').resolve()} (private) and {public.resolve()}")
    print(f"keep {(out / 'ca.key').resolve()} offline: it signs SuperLink certificates")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fedseqrec.privacy.report import compare_runs, write_privacy_report

    if args.compare:
        out = Path(args.out or "privacy_utility.png")
        rows = compare_runs([Path(r) for r in args.runs], out)
        print("| run | largest ε | test NDCG@10 | test HR@10 |")
        print("|---|---:|---:|---:|")
        for r in rows:
            print(f"| {r['run']} | {r['epsilon']:.3f} | {r['NDCG@10']:.4f} | {r['HR@10']:.4f} |")
        print(f"privacy–utility plot: {out.resolve()}")
        return 0
    if len(args.runs) != 1:
        raise UserError("fedseqrec report takes one RUN_DIR (or several with --compare)")
    folder = Path(args.runs[0])
    report = write_privacy_report(folder)
    print(f"largest ε {report['max_epsilon']:.4f} at δ ≤ {report['delta']:.3g} over {len(report['clients'])} clients")
    print(f"written {folder / 'privacy_report.json'}, privacy_report.md, epsilon_per_round.png, ndcg_per_round.png")
    return 0


def _add_command(
    commands: argparse._SubParsersAction, name: str, summary: str, description: str, handler: Handler | None = None
) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=summary, description=description, formatter_class=_Formatter)
    _debug_option(parser, top=False)
    if handler is not None:
        parser.set_defaults(handler=handler)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedseqrec",
        description="Federated, differentially private training of sequence recommenders.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"fedseqrec {__version__}")
    _debug_option(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data = _add_command(commands, "data", "inspect and prepare datasets", "Inspect and prepare datasets.")
    data_commands = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)

    stats = _add_command(
        data_commands,
        "stats",
        "print dataset statistics",
        "Users, items, interactions, events per type, sequence-length quantiles, the split and, with "
        "--partition, per-client counts.",
        cmd_data_stats,
    )
    add_data_options(stats)
    add_partition_options(stats)
    stats.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    stats.add_argument("--compact", action="store_true", help="with --json: on one line")

    prepare = _add_command(
        data_commands,
        "prepare",
        "write a processed dataset for fast loading",
        "Load, clean, split (and partition) --data once and write the prepared format "
        "(see fedseqrec/data/store.py) to --out. Later commands accept the folder as --data.",
        cmd_data_prepare,
    )
    add_data_options(prepare)
    add_partition_options(prepare)
    prepare.add_argument("--out", required=True, metavar="DIR", help="folder to write (replaced atomically)")

    export = _add_command(
        data_commands,
        "export-partitions",
        "one data folder per client, for deployment",
        "Partition --data into clients and write one folder per client under --out (client-000, client-001, ...): "
        "that client's users only, in the prepared format, with the whole item vocabulary and the global split. "
        "Copy each folder to its client's host and start its SuperNode with --node-config "
        '"data-path=FOLDER ledger-path=FILE".',
        cmd_data_export,
    )
    add_data_options(export)
    add_partition_options(export)
    export.set_defaults(partition="iid")
    export.add_argument("--out", required=True, metavar="DIR", help="folder to write (replaced atomically)")

    train = _add_command(
        commands,
        "train",
        "centralized training (the baseline for federated runs)",
        "Train a sequence recommender on all users at once: AdamW, early stopping on validation NDCG@10, best "
        "weights in --out/model.pt, per-epoch metrics in --out/metrics.jsonl and final validation and test "
        "metrics in --out/metrics.json.",
        cmd_train,
    )
    add_data_options(train, truncate=False)
    add_model_options(train)
    add_training_options(train)
    train.add_argument("--out", default=None, metavar="DIR", help="results folder (default: runs/train-MODEL)")

    simulate = _add_command(
        commands,
        "simulate",
        "a federated run on this machine (Flower simulation engine)",
        "Split --data into clients (--partition, --clients), run --rounds of federated training through Flower's "
        "simulation engine and evaluate the global model. Writes a run folder (--out): config.json, metrics.jsonl "
        "(one line per round), metrics.json, model.pt (best) and model_last.pt, summary.md. The same knobs are "
        "the run config of `flwr run .` (pyproject.toml, [tool.flwr.app.config]).",
        cmd_simulate,
    )
    add_run_options(simulate)
    r = simulate.add_argument_group("run")
    r.add_argument("--out", default=None, metavar="DIR", help="run folder (default: runs/STRATEGY-MODEL-TIME)")
    r.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue a run after its last completed round, with its own configuration (only --rounds may change)",
    )
    r.add_argument(
        "--client-cpus",
        type=float,
        default=1.0,
        help="CPUs per simulated client: clients run side by side on (CPUs / this) Ray workers",
    )
    r.add_argument("--verbose", action="store_true", help="show Flower's and Ray's own logs")

    deploy = _add_command(
        commands,
        "deploy",
        "Flower's deployment engine: a SuperLink and SuperNodes as separate processes",
        "Run federations on Flower's deployment engine. See docs/deployment.md for separate hosts.",
    )
    deploy_commands = deploy.add_subparsers(dest="deploy_command", metavar="COMMAND", required=True)
    local = _add_command(
        deploy_commands,
        "local",
        "a real deployment on 127.0.0.1: SuperLink, one SuperNode per client, flwr run",
        "Export one data folder per client, start a SuperLink and one SuperNode per client on 127.0.0.1 as separate "
        "processes (each with its own Flower home folder), run the app against them through `flwr run`, stream its "
        "progress and write the usual run folder (--out; the deployment's certificates, node ledgers and logs in "
        "--out/deployment). Every process it starts is stopped when the run ends, fails or is interrupted. TLS "
        "and SuperNode authentication are on unless --insecure.",
        cmd_deploy_local,
    )
    add_run_options(local)
    r = local.add_argument_group("deployment")
    security = r.add_mutually_exclusive_group()
    security.add_argument(
        "--tls",
        action="store_true",
        help="TLS between SuperNodes and SuperLink, and SuperNode authentication (the default)",
    )
    security.add_argument(
        "--insecure", action="store_true", help="no TLS and no SuperNode authentication (loopback trials only)"
    )
    r.add_argument(
        "--isolation",
        default="subprocess",
        choices=("subprocess", "process"),
        help="subprocess: each SuperNode starts its ClientApp executor; process: we start one per SuperNode",
    )
    r.add_argument("--out", default=None, metavar="DIR", help="run folder (default: runs/deploy-STRATEGY-MODEL-TIME)")
    r.add_argument("--verbose", action="store_true", help="show everything `flwr run --stream` prints")
    r.add_argument(
        "--timeout", type=float, default=None, metavar="SECONDS", help="stop everything if the run takes longer"
    )

    app = _add_command(
        deploy_commands,
        "app",
        "write the Flower App (run config) for `flwr run` against a deployment",
        "Write APP_DIR/pyproject.toml: a Flower App with fedseqrec's ServerApp and ClientApp and a run config made "
        "from the same flags as `simulate` (paths as seen on the SuperLink's host). Submit it with "
        "`flwr run APP_DIR CONNECTION --stream`. fedseqrec must be installed on the SuperLink's and every "
        "SuperNode's host.",
        cmd_deploy_app,
    )
    app.add_argument("app", metavar="APP_DIR", help="folder to write the app to")
    add_run_options(app)
    app.add_argument("--out", default=None, metavar="RUN_DIR", help="the run folder on the SuperLink's host (absolute)")

    credentials = _add_command(
        deploy_commands,
        "credentials",
        "TLS certificates and SuperNode keys for a deployment",
        "Write a CA (ca.crt, ca.key), a SuperLink certificate for --hosts (server.pem, server.key) and --nodes "
        "SuperNode key pairs (node-000, node-000.pub, ...) to --out. Register each .pub with "
        "`flwr supernode register`; copy each private key to its SuperNode's host only.",
        cmd_deploy_credentials,
    )
    credentials.add_argument("--out", required=True, metavar="DIR", help="folder for the certificates and keys")
    credentials.add_argument(
        "--hosts",
        nargs="+",
        default=["127.0.0.1", "localhost"],
        metavar="HOST",
        help="names and IP addresses SuperNodes dial the SuperLink at (the certificate is valid for these)",
    )
    credentials.add_argument("--nodes", type=int, default=0, help="SuperNode key pairs to make")
    credentials.add_argument("--force", action="store_true", help="overwrite an existing folder's files")

    report = _add_command(
        commands,
        "report",
        "privacy report of a run, or the privacy-utility curve of several",
        "Regenerate privacy_report.json / .md and the plots (ε per round, NDCG@10 per round) of a run folder "
        "written with --dp; with --compare, plot test NDCG@10 against the largest client ε of several runs.",
        cmd_report,
    )
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folder(s)")
    report.add_argument("--compare", action="store_true", help="privacy-utility curve of several runs")
    report.add_argument("--out", default=None, help="with --compare: the PNG to write (default privacy_utility.png)")

    evaluate = _add_command(
        commands,
        "evaluate",
        "evaluate a saved model",
        "Validation and test metrics of a checkpoint folder written by `fedseqrec train`, on --data (which "
        "must have the item vocabulary the model was trained on).",
        cmd_evaluate,
    )
    add_data_options(evaluate, truncate=False)
    evaluate.add_argument("--checkpoint", required=True, metavar="DIR", help="folder holding model.pt and model.json")
    evaluate.add_argument("--protocol", default="full", choices=PROTOCOLS, help="ranking protocol")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except UserError as err:
        if args.debug:
            raise
        print(f"fedseqrec: error: {err}", file=sys.stderr)
        return 2
    except RunError as err:
        if args.debug:
            raise
        print(f"fedseqrec: run stopped: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fedseqrec: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        print(
            f"fedseqrec: internal error: {type(err).__name__}: {err} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
