"""A real ``jupyter server`` subprocess with the extension on a small demo archive, and notebooks
run in kernels that server starts itself.

The kernel is started through the server's REST API (``POST /api/sessions``), so it has exactly
the environment of a kernel a user opens (``JPY_PARENT_PID`` is the server's pid, the server's
runtime directory, its root as working directory). nbclient then drives that kernel through its
connection file: ``NotebookClient.async_execute_cell`` with our kernel client, and a small
kernel-manager stand-in that asks the server whether the kernel is alive.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from hera_stage_ext.demo import make_demo_archive

from .jupyter_process import JupyterProcess, jupyter_process


@pytest.fixture(scope="module")
def live_server(tmp_path_factory) -> Iterator[JupyterProcess]:
    yield from _demo_server(tmp_path_factory.mktemp("live"), files_per_night=6, nights=3)


@pytest.fixture
def slow_server(tmp_path) -> Iterator[JupyterProcess]:
    """A server whose worker waits 0.5 s after each chunk it copies, so a job is still running
    when a test cancels it."""
    yield from _demo_server(tmp_path, files_per_night=3, nights=1,
                            env={"HERA_STAGE_TEST_CHUNK_DELAY": "0.5"})


def _demo_server(base, *, files_per_night: int, nights: int,
                 env: dict[str, str] | None = None) -> Iterator[JupyterProcess]:
    archive = make_demo_archive(base / "demo", files_per_night=files_per_night, nights=nights)
    config = {"StagingApp": {"db_url": archive.db_url, "stores": archive.stores,
                             "job_log_dir": str(base / "job-logs"),
                             "worker_idle_exit_seconds": 10.0}}
    with jupyter_process(base, root_dir=archive.workspace, config=config, env=env) as server:
        # Ingest through the REST API, as a user of the server would.
        from hera_stage_ext.client import Client

        client = Client(server.url, server.token)
        for store in archive.stores:
            plan = client.ingest_plan(store, ["*/*"])
            report = client.ingest_paths(store, plan["todo"])
            assert not report["errors"], report
        yield server


class ServerKernel:
    """What nbclient needs of a kernel manager, for a kernel the server owns."""

    def __init__(self, server: JupyterProcess, kernel_id: str) -> None:
        self.server, self.kernel_id = server, kernel_id
        self.has_kernel = True

    async def is_alive(self) -> bool:
        reply = await asyncio.to_thread(self.server.request, "GET", f"api/kernels/{self.kernel_id}")
        return reply.status_code == 200 and reply.json().get("execution_state") != "dead"

    async def interrupt_kernel(self) -> None:
        await asyncio.to_thread(self.server.request, "POST",
                                f"api/kernels/{self.kernel_id}/interrupt")


def notebook(*sources: str) -> Any:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    return nb


def run_notebook(server: JupyterProcess, nb: Any, *, path: str = "test.ipynb",
                 timeout: float = 60.0) -> Any:
    """Execute every cell of ``nb`` in a kernel the server starts for ``path``; cells tagged
    ``raises-exception`` may fail. Returns the executed notebook (outputs, widget state)."""
    from jupyter_client.asynchronous import AsyncKernelClient
    from nbclient import NotebookClient

    reply = server.request("POST", "api/sessions", {"path": path, "type": "notebook",
                                                 "kernel": {"name": "python3"}})
    assert reply.status_code == 201, reply.text
    kernel_id = reply.json()["kernel"]["id"]
    session_id = reply.json()["id"]
    connection_file = server.runtime_dir / f"kernel-{kernel_id}.json"

    async def run() -> None:
        kc = AsyncKernelClient(connection_file=str(connection_file))
        kc.load_connection_file()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=60)
            client = NotebookClient(nb, km=ServerKernel(server, kernel_id), timeout=timeout,
                                    kernel_name="python3")
            client.kc = kc
            for index, cell in enumerate(nb.cells):
                await client.async_execute_cell(cell, index)
            client.set_widgets_metadata()
        finally:
            kc.stop_channels()

    try:
        asyncio.run(run())
    finally:
        server.request("DELETE", f"api/sessions/{session_id}")
    return nb


def widget_states(nb: Any) -> dict[str, dict[str, Any]]:
    """model id -> {"model_name", "state"} as nbclient recorded them from the comms."""
    return nb.metadata.get("widgets", {}).get(
        "application/vnd.jupyter.widget-state+json", {}).get("state", {})


def error_of(cell: Any) -> dict[str, Any] | None:
    for output in cell.get("outputs", []):
        if output["output_type"] == "error":
            return output
    return None


def text_of(cell: Any, name: str = "stdout") -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", [])
                   if o["output_type"] == "stream" and o["name"] == name)
