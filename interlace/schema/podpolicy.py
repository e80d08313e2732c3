"""Pod Security for every pod the operator creates (torch-free; the operator imports it).

One policy, stated once, decides the Ray head, worker and submitter pods and every container in
them (the Ray containers, init containers given in podTemplateOverrides, the submitter): Pod
Security Standards "baseline" always, "restricted" unless spec.resources.podSecurity is baseline.

The operator writes the restricted defaults below into every pod and container; an override's
securityContext is merged over them (one level deep: capabilities and seccompProfile merge too),
and the policy judges the *effective* context, so the builders and the validation agree by
construction. The models call `override_violations` (PodTemplateOverride validation), so
`interlace validate [--cluster]` and the operator (which parses every PruneJob through the same
models before it creates any child) refuse the same override with the same field path and message.
"""

from __future__ import annotations

from typing import Any

LEVELS = ("restricted", "baseline")
RUN_AS_USER = 1000  # the runtime image's user (images/runtime/Dockerfile: USER 1000:100), like Ray's images
RUN_AS_GROUP = 100

POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS_USER,
    "runAsGroup": RUN_AS_GROUP,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS_USER,
    "allowPrivilegeEscalation": False,
    "seccompProfile": {"type": "RuntimeDefault"},
    "capabilities": {"drop": ["ALL"]},
}

# https://kubernetes.io/docs/concepts/security/pod-security-standards/
BASELINE_CAPABILITIES = frozenset({
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
})
RESTRICTED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
SAFE_SYSCTLS = frozenset({
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
})
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
RESTRICTED_VOLUME_TYPES = frozenset({
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
})
SECCOMP_TYPES = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"
RELAX = "set spec.resources.podSecurity: baseline to allow it"


def merged(defaults: dict[str, Any], override: dict[str, Any] | None) -> dict[str, Any]:
    """The effective security context: the override's keys over the defaults, maps one level deep."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in defaults.items()}
    for k, v in (override or {}).items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _common(sc: dict[str, Any], where: str, level: str) -> list[str]:
    """Controls shared by the pod's and a container's security context."""
    p = []
    if (sc.get("windowsOptions") or {}).get("hostProcess"):
        p.append(f"{where}.windowsOptions.hostProcess: host process containers break Pod Security baseline")
    se = sc.get("seLinuxOptions") or {}
    if se.get("type", "") not in SELINUX_TYPES:
        p.append(f"{where}.seLinuxOptions.type: {se['type']!r} breaks Pod Security baseline "
                 f"(allowed: {', '.join(sorted(t for t in SELINUX_TYPES if t))})")
    for key in ("user", "role"):
        if se.get(key):
            p.append(f"{where}.seLinuxOptions.{key}: setting an SELinux {key} breaks Pod Security baseline")
    seccomp = (sc.get("seccompProfile") or {}).get("type")
    if seccomp == "Unconfined":
        p.append(f"{where}.seccompProfile.type: Unconfined breaks Pod Security baseline (use RuntimeDefault)")
    elif level == "restricted" and seccomp not in SECCOMP_TYPES:
        p.append(f"{where}.seccompProfile.type: {seccomp!r} breaks Pod Security restricted "
                 f"(use RuntimeDefault or Localhost; {RELAX})")
    if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
        p.append(f"{where}.appArmorProfile.type: Unconfined breaks Pod Security baseline (use RuntimeDefault)")
    if level == "restricted":
        if sc.get("runAsNonRoot") is not True:
            p.append(f"{where}.runAsNonRoot: must be true under Pod Security restricted ({RELAX})")
        if sc.get("runAsUser") == 0:
            p.append(f"{where}.runAsUser: 0 (root) breaks Pod Security restricted ({RELAX})")
    return p


def pod_security_context_violations(sc: dict[str, Any] | None, where: str, level: str) -> list[str]:
    """Problems of a pod's effective PodSecurityContext (the defaults merged with the override)."""
    eff = merged(POD_SECURITY_CONTEXT, sc)
    p = _common(eff, where, level)
    for i, s in enumerate(eff.get("sysctls") or []):
        if s.get("name") not in SAFE_SYSCTLS:
            p.append(f"{where}.sysctls[{i}].name: {s.get('name')!r} is not a safe sysctl (Pod Security baseline)")
    return p


def container_security_context_violations(sc: dict[str, Any] | None, where: str, level: str) -> list[str]:
    """Problems of a container's effective SecurityContext (the defaults merged with the override)."""
    eff = merged(CONTAINER_SECURITY_CONTEXT, sc)
    p = _common(eff, where, level)
    if eff.get("privileged"):
        p.append(f"{where}.privileged: privileged containers break Pod Security baseline")
    if eff.get("procMount", "Default") != "Default":
        p.append(f"{where}.procMount: {eff['procMount']!r} breaks Pod Security baseline (use Default)")
    caps = eff.get("capabilities") or {}
    allowed = RESTRICTED_CAPABILITIES if level == "restricted" else BASELINE_CAPABILITIES
    extra = sorted(set(caps.get("add") or []) - allowed)
    if extra:
        p.append(f"{where}.capabilities.add: {extra} break Pod Security {level} "
                 f"(allowed: {', '.join(sorted(allowed))})")
    if level == "restricted":
        if eff.get("allowPrivilegeEscalation") is not False:
            p.append(f"{where}.allowPrivilegeEscalation: must be false under Pod Security restricted ({RELAX})")
        if "ALL" not in (caps.get("drop") or []):
            p.append(f"{where}.capabilities.drop: must include ALL under Pod Security restricted ({RELAX})")
    return p


def container_violations(c: dict[str, Any], where: str, level: str) -> list[str]:
    """A whole Container object given by a user (an init container)."""
    p = container_security_context_violations(c.get("securityContext"), f"{where}.securityContext", level)
    for i, port in enumerate(c.get("ports") or []):
        if port.get("hostPort"):
            p.append(f"{where}.ports[{i}].hostPort: host ports break Pod Security baseline")
    return p


def volume_violations(v: dict[str, Any], where: str, level: str) -> list[str]:
    if "hostPath" in v:
        return [f"{where}.hostPath: hostPath volumes break Pod Security baseline (use a PersistentVolumeClaim)"]
    kinds = sorted(set(v) - {"name"} - RESTRICTED_VOLUME_TYPES)
    if level == "restricted" and kinds:
        return [f"{where}.{kinds[0]}: volume type {kinds[0]} breaks Pod Security restricted (allowed: "
                f"{', '.join(sorted(RESTRICTED_VOLUME_TYPES))}; {RELAX})"]
    return []


def annotation_violations(annotations: dict[str, str], where: str) -> list[str]:
    p = []
    for k, v in annotations.items():
        if k.startswith(APPARMOR_ANNOTATION) and v != "runtime/default" and not v.startswith("localhost/"):
            p.append(f"{where}: {k}: AppArmor profile {v!r} breaks Pod Security baseline (use runtime/default)")
    return p
