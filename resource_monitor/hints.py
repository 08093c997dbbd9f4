"""Why a case failed, in words a team can act on: the sandbox rule a failed run most likely broke, found in
its status and the last lines of its log.

The rules (docs/security.md): the inputs are read-only, there is no network, the command is ``sh
predict.sh`` (POSIX sh, not bash), the GPU is there only when the organizers give one, the memory and the
time are limited, and outputs go to ``/workspace/outputs`` as ``<Case>.nii.gz``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: re.Pattern  # searched in the lower-cased status and log tail
    hint: str


RULES: tuple[Rule, ...] = (
    Rule("read-only inputs", re.compile(r"read-only file system|/workspace/inputs.*(permission denied|errno 30)"),
         "/workspace/inputs is read-only: write temporary files to /tmp and outputs to /workspace/outputs"),
    Rule("no network", re.compile(r"network is unreachable|temporary failure in name resolution|could not resolve|"
                                  r"name or service not known|failed to establish a new connection|urlopen error"),
         "the container has no network: bake weights and packages into the image at build time"),
    Rule("sh, not bash", re.compile(r"(\[\[|source|declare|shopt|pushd|popd|let|function|local -n): not found|"
                                    r"bad substitution|syntax error: \"\(\" unexpected|"
                                    r"syntax error: redirection unexpected|syntax error: word unexpected"),
         "predict.sh runs under `sh` (dash here), not bash: use POSIX sh, or `exec bash script.sh` inside it"),
    Rule("no GPU", re.compile(r"no cuda gpus are available|cuda driver|found no nvidia driver|"
                              r"torch\.cuda\.is_available\(\) is false|cudagetdevicecount"),
         "no GPU was given to the container: fall back to the CPU when torch.cuda.is_available() is False"),
    Rule("memory limit", re.compile(r"out of memory \(killed at|memoryerror|cannot allocate memory"),
         "the container hit its memory limit (--memory): process the volume in pieces or lower the resolution"),
    Rule("time limit", re.compile(r"^timeout$", re.MULTILINE),
         "the case ran past the time limit (--timeout): it is killed and takes the worst values"),
    Rule("disk limit", re.compile(r"wrote more than"),
         "the case wrote more than its disk caps: write one <Case>.nii.gz and keep scratch files small"),
    Rule("no bash", re.compile(r"cannot run '/bin/bash"),
         "the image has no /bin/bash: the FLARE command is /bin/bash -c \"sh predict.sh\""),
)


def hint_for(status: str, log_tail: list[str]) -> Rule | None:
    """The first rule whose pattern matches the status or the log tail, or None."""
    text = "\n".join([status, *log_tail])
    for rule in RULES:
        if rule.pattern.search(text.lower()):
            return rule
    return None


def explain(case: str, status: str, log_tail: list[str], lines: int = 8) -> list[str]:
    """Console lines for a failed case: the verdict, the last ``lines`` of its log, and a hint if one fits."""
    out = [f"{case}: {status}"]
    out += [f"    | {line}" for line in log_tail[-lines:]]
    rule = hint_for(status, log_tail)
    if rule is not None:
        out.append(f"    hint ({rule.name}): {rule.hint}")
    return out
