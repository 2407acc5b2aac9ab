"""`gpubatch-operator`: run the kopf operator (in a cluster, or against KUBECONFIG)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import kopf

from gpubatch.controller import handlers
from gpubatch.controller.leaseserver import lease_settings
from gpubatch.core.planner import DEFAULT_MAX_CREATES_PER_PASS, DEFAULT_MAX_PENDING, Limits


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gpubatch-operator", description=__doc__)
    parser.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    parser.add_argument(
        "--max-pending",
        type=int,
        default=DEFAULT_MAX_PENDING,
        help="unscheduled task pods allowed per batch beyond those running "
        f"(default {DEFAULT_MAX_PENDING}; a batch's spec.maxPending overrides)",
    )
    parser.add_argument(
        "--max-creates-per-pass",
        type=int,
        default=DEFAULT_MAX_CREATES_PER_PASS,
        help=f"most pods one reconcile pass creates (default {DEFAULT_MAX_CREATES_PER_PASS})",
    )
    parser.add_argument(
        "--api-concurrency",
        type=int,
        default=32,
        help="concurrent API requests of the operator's pod client (default 32)",
    )
    parser.add_argument(
        "--default-queue-name",
        default=None,
        help="Kueue LocalQueue for batches without a kueue.x-k8s.io/queue-name label (their "
        "pods get this label, so Kueue admits them); unset: such batches are not queued",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=8080,
        help="Prometheus metrics port (0 disables; default 8080)",
    )
    parser.add_argument(
        "--liveness",
        default="http://0.0.0.0:8081/healthz",
        help="liveness endpoint URL (empty disables)",
    )
    leases = parser.add_argument_group(
        "lease endpoint",
        "the HTTPS endpoint warm worker pods get their tasks from (docs/operator.md); "
        "give all of --lease-port, --lease-cert, --lease-key, --lease-ca and --lease-url, "
        "or none (no warm workers)",
    )
    leases.add_argument("--lease-port", type=int, default=None, help="port to serve on")
    leases.add_argument(
        "--lease-host",
        default="0.0.0.0",  # noqa: S104 - pods reach the operator through its Service
        help="address to bind (default 0.0.0.0)",
    )
    leases.add_argument("--lease-cert", default=None, help="serving certificate (PEM file)")
    leases.add_argument("--lease-key", default=None, help="its private key (PEM file)")
    leases.add_argument(
        "--lease-ca", default=None, help="CA certificate (PEM file) pods verify the operator with"
    )
    leases.add_argument(
        "--lease-url",
        default=None,
        help="the URL pods use, e.g. https://SERVICE.NAMESPACE.svc:8443/v1/lease",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    try:
        args.lease = lease_settings(
            port=args.lease_port,
            host=args.lease_host,
            cert=args.lease_cert,
            key=args.lease_key,
            ca=args.lease_ca,
            url=args.lease_url,
        )
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    operator = handlers.Operator(
        limits=Limits(max_pending=args.max_pending, max_creates_per_pass=args.max_creates_per_pass),
        api_concurrency=args.api_concurrency,
        metrics_port=args.metrics_port or None,
        lease=args.lease,
        default_queue=args.default_queue_name or None,
    )
    kopf.configure(verbose=args.verbose)
    if not args.verbose:
        # kopf logs every pod event handler at INFO; at thousands of pods that drowns the log.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    asyncio.run(
        kopf.operator(
            standalone=True,
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            liveness_endpoint=args.liveness or None,
            memo=operator.memo(),
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
