"""Run one Pod's containers as local processes: the part of a kubelet that touches the host.

Contract: ``PodProcess(pod, pod_ip, root, core_api)`` materializes the pod's ConfigMap,
Secret, emptyDir and service-account volumes under ``root``, resolves its environment
(values, ``fieldRef`` to podIP/name/namespace/nodeName, ConfigMap and Secret keys) and expands
``$(VAR)`` in command and args as Kubernetes does. ``start()`` runs each container's command
in its own process group; ``poll()`` restarts exited containers (restartPolicy Always) and
runs readiness probes; ``stop(grace)`` ends them. Container images are not pulled: the command
must exist on this host (``carpool ...``).

Paths are the one liberty taken: a process sees a volume at ``root/volumes/<name>``, and every
argument or environment value that starts with a ``mountPath`` is rewritten to that folder. The
service-account token is given through a generated kubeconfig in ``$KUBECONFIG`` rather than at
``/var/run/secrets``. Both keep the host's filesystem untouched and need no privileges. With
no network namespace of its own, a pod's "all interfaces" is its loopback IP: an argument
``0.0.0.0`` (a server binding every interface of the pod) becomes the pod's IP.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from kubernetes import client

from carpool_cluster.kubeconfig import write_token_kubeconfig

_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: unknown references stay as written, ``$$`` is ``$``."""

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR.sub(replace, text)


@dataclasses.dataclass
class ContainerProcess:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    readiness: dict | None
    ports: dict[str, int]
    popen: subprocess.Popen | None = None
    restarts: int = 0
    ready: bool = False
    last_exit_code: int | None = None
    next_start: float = 0.0


class PodProcess:
    def __init__(
        self,
        pod: client.V1Pod,
        pod_ip: str,
        root: Path,
        core: client.CoreV1Api,
        server: str,
        ca_file: str,
    ) -> None:
        self.pod = pod
        self.pod_ip = pod_ip
        self.root = root
        self._core = core
        self._server = server
        self._ca_file = ca_file
        self.containers: list[ContainerProcess] = []
        self.started_at: str | None = None

    @property
    def key(self) -> str:
        return f"{self.pod.metadata.namespace}/{self.pod.metadata.name}"

    # -- materializing -------------------------------------------------------------------

    def _volume_folders(self) -> dict[str, Path]:
        folders = {}
        namespace = self.pod.metadata.namespace
        for volume in self.pod.spec.volumes or []:
            folder = self.root / "volumes" / volume.name
            folder.mkdir(parents=True, exist_ok=True)
            if volume.config_map is not None:
                cm = self._core.read_namespaced_config_map(volume.config_map.name, namespace)
                for key, value in (cm.data or {}).items():
                    (folder / key).write_text(value)
            elif volume.secret is not None:
                secret = self._core.read_namespaced_secret(volume.secret.secret_name, namespace)
                for key, value in (secret.data or {}).items():
                    (folder / key).write_bytes(base64.b64decode(value))
            elif volume.projected is not None:
                self._write_service_account(folder)
            folders[volume.name] = folder
        return folders

    def _write_service_account(self, folder: Path) -> None:
        account = self.pod.spec.service_account_name or "default"
        namespace = self.pod.metadata.namespace
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=24 * 3600)
        )
        token = self._core.create_namespaced_service_account_token(
            account, namespace, request
        ).status.token
        (folder / "token").write_text(token)
        (folder / "namespace").write_text(namespace)
        (folder / "ca.crt").write_bytes(Path(self._ca_file).read_bytes())
        write_token_kubeconfig(
            folder / "kubeconfig", self._server, Path(self._ca_file), token, namespace
        )

    def _env(self, container: client.V1Container) -> dict[str, str]:
        meta, spec = self.pod.metadata, self.pod.spec
        fields = {
            "status.podIP": self.pod_ip,
            "status.hostIP": "127.0.0.1",
            "metadata.name": meta.name,
            "metadata.namespace": meta.namespace,
            "spec.nodeName": spec.node_name,
            "spec.serviceAccountName": spec.service_account_name or "default",
            "metadata.uid": meta.uid,
        }
        env: dict[str, str] = {}
        for item in container.env or []:
            source = item.value_from
            if source is None:
                env[item.name] = expand(item.value or "", env)
            elif source.field_ref is not None:
                env[item.name] = fields.get(source.field_ref.field_path, "")
            elif source.config_map_key_ref is not None:
                ref = source.config_map_key_ref
                cm = self._core.read_namespaced_config_map(ref.name, meta.namespace)
                env[item.name] = (cm.data or {}).get(ref.key, "")
            elif source.secret_key_ref is not None:
                ref = source.secret_key_ref
                secret = self._core.read_namespaced_secret(ref.name, meta.namespace)
                env[item.name] = base64.b64decode((secret.data or {}).get(ref.key, "")).decode()
        return env

    def prepare(self) -> None:
        folders = self._volume_folders()
        for container in self.pod.spec.containers:
            env = self._env(container)
            mounts = {
                m.mount_path.rstrip("/"): folders[m.name]
                for m in container.volume_mounts or []
                if m.name in folders
            }

            def rewrite(value: str, mounts: dict[str, Path] = mounts) -> str:
                for mount_path, folder in sorted(mounts.items(), key=lambda i: -len(i[0])):
                    if value == mount_path or value.startswith(mount_path + "/"):
                        return str(folder) + value[len(mount_path) :]
                return value

            argv = [
                self.pod_ip if a == "0.0.0.0" else rewrite(expand(a, env))
                for a in (container.command or []) + (container.args or [])
            ]
            env = {k: rewrite(v) for k, v in env.items()}
            for mount_path, folder in mounts.items():
                if (folder / "kubeconfig").exists() and "serviceaccount" in mount_path:
                    env.setdefault("KUBECONFIG", str(folder / "kubeconfig"))
            ports = {p.name: p.container_port for p in container.ports or [] if p.name}
            probe = container.readiness_probe
            readiness = None
            if probe is not None and probe.http_get is not None:
                port = probe.http_get.port
                port = ports.get(port, port) if isinstance(port, str) else port
                readiness = {
                    "port": int(port),
                    "path": probe.http_get.path or "/",
                    "period": max(1, probe.period_seconds or 10),
                }
            self.containers.append(
                ContainerProcess(
                    name=container.name,
                    argv=argv,
                    env=env,
                    readiness=readiness,
                    ports=ports,
                    log=self.root / f"{container.name}.log",
                )
            )

    # -- running -------------------------------------------------------------------------

    def _launch(self, proc: ContainerProcess) -> None:
        base_env = {
            k: v
            for k, v in os.environ.items()
            if k in {"PATH", "HOME", "LANG", "PYTHONPATH", "VIRTUAL_ENV", "TMPDIR"}
        }
        # Commands such as `carpool` live beside this Python, on PATH or not.
        scripts = os.path.dirname(sys.executable)
        base_env["PATH"] = f"{scripts}:{base_env.get('PATH', '/usr/bin:/bin')}"
        with proc.log.open("ab") as sink:
            proc.popen = subprocess.Popen(
                proc.argv,
                env={**base_env, **proc.env},
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.root,
                start_new_session=True,
            )
        proc.ready = False

    def start(self) -> None:
        self.started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for proc in self.containers:
            try:
                self._launch(proc)
            except OSError as error:  # command not found: report it like a crash loop
                proc.last_exit_code = 127
                proc.next_start = time.monotonic() + 10
                with proc.log.open("a") as sink:
                    sink.write(f"cannot start {proc.argv[:1]}: {error}\n")

    def poll(self) -> None:
        for proc in self.containers:
            if proc.popen is None or proc.popen.poll() is not None:
                if proc.popen is not None and proc.last_exit_code is None:
                    proc.last_exit_code = proc.popen.returncode
                    # Back off like the kubelet's CrashLoopBackOff, capped low for tests.
                    proc.next_start = time.monotonic() + min(2**proc.restarts, 20)
                    proc.ready = False
                if time.monotonic() >= proc.next_start:
                    proc.restarts += 1 if proc.popen is not None else 0
                    proc.last_exit_code = None
                    try:
                        self._launch(proc)
                    except OSError:
                        proc.next_start = time.monotonic() + 10
                continue
            proc.ready = self._probe(proc)

    def _probe(self, proc: ContainerProcess) -> bool:
        if proc.readiness is None:
            return True
        url = f"http://{self.pod_ip}:{proc.readiness['port']}{proc.readiness['path']}"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return 200 <= response.status < 400
        except Exception:
            return False

    def stop(self, grace_seconds: float) -> None:
        self.terminate()
        self.finish(time.monotonic() + grace_seconds)

    def terminate(self) -> None:
        """SIGTERM every running container's process group."""
        for proc in self.containers:
            if proc.popen and proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGTERM)

    def finish(self, deadline: float) -> None:
        """Wait for the containers until `deadline` (monotonic), then SIGKILL what is left."""
        for proc in self.containers:
            if proc.popen is None:
                continue
            try:
                proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait()
