"""A ``kubectl scale`` hook against an autoscaled Deployment: say so before the sweep trusts it.

An HPA (or KEDA's, which is an HPA named ``keda-hpa-<ScaledObject>``) resets the replica count
the hook just set, so a point measures whatever the autoscaler chose. Pause it for the sweep
(KEDA: the ``autoscaling.keda.sh/paused-replicas`` annotation) or pin ``minReplicas`` to
``maxReplicas``; deploy/README.md shows both. This check is a warning only, and best effort:
without kubectl, cluster access or a recognisable hook it says nothing.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import shutil
import subprocess
from typing import Any, Final

__all__ = ["autoscalers_of", "hook_deployment", "warn_if_autoscaled"]

logger = logging.getLogger("tokenbooth.loadgen")

_KUBECTL_TIMEOUT_S: Final = 10.0
_DEPLOYMENT = re.compile(r"^(?:deployments?|deploy)(?:\.apps)?/(?P<name>[^\s/]+)$")


def hook_deployment(hook: str) -> tuple[str | None, str] | None:
    """``(namespace or None, deployment)`` a ``kubectl scale`` hook scales, else None."""
    try:
        words = shlex.split(hook.replace("{", "").replace("}", ""))
    except ValueError:
        return None
    if not any(w.endswith("kubectl") for w in words) or "scale" not in words:
        return None
    namespace = None
    name = None
    for i, word in enumerate(words):
        if word in ("-n", "--namespace") and i + 1 < len(words):
            namespace = words[i + 1]
        elif word.startswith("--namespace="):
            namespace = word.split("=", 1)[1]
        elif (m := _DEPLOYMENT.match(word)) is not None:
            name = m.group("name")
    return None if name is None else (namespace, name)


def autoscalers_of(hpa_list: dict[str, Any], deployment: str) -> list[str]:
    """Names of the HPAs in ``kubectl get hpa -o json`` output that scale ``deployment``."""
    found = []
    for item in hpa_list.get("items", []):
        ref = item.get("spec", {}).get("scaleTargetRef", {})
        if ref.get("kind") == "Deployment" and ref.get("name") == deployment:
            found.append(str(item["metadata"]["name"]))
    return found


def warn_if_autoscaled(hook: str) -> str | None:
    """Warn (and return the warning) when the hook's Deployment has an HPA; None otherwise."""
    target = hook_deployment(hook)
    kubectl = shutil.which("kubectl")
    if target is None or kubectl is None:
        return None
    namespace, deployment = target
    cmd = [kubectl, "get", "hpa", "-o", "json"]
    if namespace:
        cmd += ["--namespace", namespace]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=_KUBECTL_TIMEOUT_S, check=False
        )
        names = autoscalers_of(json.loads(proc.stdout), deployment) if proc.returncode == 0 else []
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        logger.info("scale hook: could not list HPAs (%s); not checked for autoscalers", exc)
        return None
    if not names:
        return None
    message = (
        f"scale hook: deployment/{deployment} is also scaled by HPA {', '.join(names)}, which "
        "will override the hook's replica count mid-sweep; pause it for the sweep (KEDA: "
        "annotate the ScaledObject autoscaling.keda.sh/paused-replicas) or pin minReplicas = "
        "maxReplicas (see deploy/README.md)"
    )
    logger.warning(message)
    return message
