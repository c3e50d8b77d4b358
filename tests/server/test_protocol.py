"""Protocol tests against the real server (uvicorn on a loopback port) with fast fake nodes."""

from __future__ import annotations

import io
import json
import os
import struct
import time

import pytest
from PIL import Image

from tests.server.conftest import LiveServer, WsClient, api_chain
from tests.server.fake_nodes import REGISTRY, RELEASE, FakeRuntime


def png_bytes(size=(8, 8), color=(1, 2, 3)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def wait_status(client, prompt_id, statuses=("completed", "failed", "cancelled"), timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/api/jobs/{prompt_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.05)
    raise TimeoutError(f"job {prompt_id} still {job['status']}")


def test_run_events_history_view(fake_server):
    c = fake_server.client()
    ws = WsClient(fake_server, "client-a", features={"supports_preview_metadata": True})
    ws.until(lambda t, d: t == "feature_flags")
    r = c.post("/prompt", json={"prompt": api_chain(value=7), "client_id": ws.sid})
    assert r.status_code == 200, r.text
    pid = r.json()["prompt_id"]
    assert r.json()["node_errors"] == {} and isinstance(r.json()["number"], int)
    events = ws.until_done(pid)
    kinds = [t for t, d in events if t != "status"]
    assert kinds[0] == "execution_start" and kinds[1] == "execution_cached"
    assert kinds[-2:] == ["executing", "execution_success"]
    executing = [d["node"] for t, d in events if t == "executing"]
    assert executing == ["1", "2", "3", None]
    progress = [(d["value"], d["max"]) for t, d in events if t == "progress"]
    assert progress == [(1, 3), (2, 3), (3, 3)]
    states = [d for t, d in events if t == "progress_state"]
    assert states[-1]["nodes"]["3"]["state"] == "finished"
    assert any(s["nodes"].get("2", {}).get("state") == "running" for s in states)
    executed = [d for t, d in events if t == "executed"]
    assert len(executed) == 1 and executed[0]["node"] == "3"
    image = executed[0]["output"]["images"][0]
    # binary previews: type 4 with metadata (the client advertised supports_preview_metadata)
    assert len(ws.binary) == 3
    kind, meta_len = struct.unpack(">II", ws.binary[0][:8])
    meta = json.loads(ws.binary[0][8:8 + meta_len])
    assert kind == 4 and meta["node_id"] == "2" and meta["prompt_id"] == pid
    assert meta["image_type"] == "image/jpeg"
    Image.open(io.BytesIO(ws.binary[0][8 + meta_len:])).verify()
    # history + view
    hist = c.get(f"/api/history/{pid}").json()[pid]
    assert hist["status"]["status_str"] == "success" and hist["outputs"]["3"]["images"][0] == image
    assert [m[0] for m in hist["status"]["messages"]] == ["execution_start", "execution_cached", "execution_success"]
    assert pid in c.get("/history").json()
    view = c.get("/api/view", params={"filename": image["filename"], "subfolder": "", "type": "output"})
    assert view.status_code == 200 and view.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(view.content)).getpixel((0, 0))[0] == 7
    jobs = c.get("/api/jobs", params={"status": "completed,failed,cancelled", "limit": 64}).json()
    assert jobs["jobs"][0]["id"] == pid and jobs["jobs"][0]["preview_output"]["filename"] == image["filename"]
    assert jobs["jobs"][0]["outputs_count"] == 1 and jobs["pagination"]["total"] == 1
    detail = c.get(f"/api/jobs/{pid}").json()
    assert detail["outputs"]["3"]["images"][0] == image and detail["workflow"]["prompt"]["2"]["class_type"] == "Slow"
    ws.close()


def test_rerun_reports_cached_nodes_and_seed_change(fake_server):
    c = fake_server.client()
    ws = WsClient(fake_server, features={})
    pid = c.post("/prompt", json={"prompt": api_chain(), "client_id": ws.sid}).json()["prompt_id"]
    ws.until_done(pid)
    ws.binary.clear()
    pid2 = c.post("/prompt", json={"prompt": api_chain(), "client_id": ws.sid}).json()["prompt_id"]
    events = [e for e in ws.until_done(pid2) if e[0] != "status"]
    assert events[1] == ("execution_cached", {"nodes": ["1", "2", "3"], "prompt_id": pid2,
                                              "timestamp": events[1][1]["timestamp"]})
    assert events[2][0] == "executed" and events[2][1]["node"] == "3"  # cached output node still shows its image
    assert not [e for e in events if e[0] == "progress"]
    # a new seed re-runs Slow and what follows, not Number
    pid3 = c.post("/prompt", json={"prompt": api_chain(seed=9), "client_id": ws.sid}).json()["prompt_id"]
    events = ws.until_done(pid3)
    assert [d for t, d in events if t == "execution_cached"][0]["nodes"] == ["1"]
    assert [d["node"] for t, d in events if t == "executing"] == ["2", "3", None]
    # legacy preview frames (type 1) for a client without supports_preview_metadata
    assert ws.binary and struct.unpack(">II", ws.binary[0][:8]) == (1, 1)
    assert c.get(f"/api/jobs/{pid2}").json()["status"] == "completed"


def test_two_clients_events_are_isolated(fake_server):
    c = fake_server.client()
    a, b = WsClient(fake_server, "alice"), WsClient(fake_server, "bob")
    pa = c.post("/prompt", json={"prompt": api_chain(value=1), "client_id": "alice"}).json()["prompt_id"]
    pb = c.post("/prompt", json={"prompt": api_chain(value=2), "client_id": "bob"}).json()["prompt_id"]
    ev_a = a.until_done(pa)
    ev_b = b.until_done(pb)
    assert all(d.get("prompt_id") in (None, pa) for t, d in ev_a if t != "status")
    assert all(d.get("prompt_id") in (None, pb) for t, d in ev_b if t != "status")
    # Bob must never see Alice's run, even after it finished
    assert not [1 for t, d in b.events if d.get("prompt_id") == pa]
    # status is broadcast to everyone
    assert any(t == "status" for t, d in ev_b)


def test_bad_graphs_give_comfy_node_errors(fake_server):
    c = fake_server.client()
    bad = {
        "1": {"class_type": "Number", "inputs": {"value": 500}},
        "2": {"class_type": "Slow", "inputs": {"a": ["1", 0], "steps": 0}},
        "3": {"class_type": "Color", "inputs": {"a": ["1", 0], "mode": "purple"}},
        "4": {"class_type": "SaveNumber", "inputs": {"filename_prefix": "x"}},
        "5": {"class_type": "FakeCheckpoint", "inputs": {"name": "nope.safetensors"}},
        "6": {"class_type": "SaveNumber", "inputs": {"value": ["3", 0]}},
        "7": {"class_type": "Slow", "inputs": {"a": ["8", 0], "steps": "many"}},
        "8": {"class_type": "SaveNumber", "inputs": {"value": ["2", 0]}},
        "9": {"class_type": "Color", "inputs": {"a": 5}},
    }
    r = c.post("/api/prompt", json={"prompt": bad, "client_id": "x"})
    assert r.status_code == 400
    body = r.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    ne = body["node_errors"]

    def types(node_id):
        return {e["type"]: e for e in ne[node_id]["errors"]}

    assert "value_bigger_than_max" in types("1") and types("1")["value_bigger_than_max"]["extra_info"]["input_name"] == "value"
    assert ne["1"]["class_type"] == "Number"
    assert "value_smaller_than_min" in types("2")
    assert "value_not_in_list" in types("3")
    assert "required_input_missing" in types("4")
    assert "value_not_in_list" in types("5")
    assert "bad_linked_input" in types("7") and "invalid_input_type" in types("7")
    assert "return_type_mismatch" in types("9")
    assert set(ne["1"]["dependent_outputs"]) == {"6", "8"}
    # nothing was queued
    assert c.get("/api/queue").json() == {"queue_running": [], "queue_pending": []}
    # unknown node type, malformed bodies
    r = c.post("/prompt", json={"prompt": {"1": {"class_type": "NoSuchNode", "inputs": {}}}})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_prompt"
    assert c.post("/prompt", json={"client_id": "x"}).json()["error"]["type"] == "no_prompt"
    assert c.post("/prompt", content=b"{not json").status_code == 400
    assert c.post("/prompt", json={"prompt": {"1": {"inputs": {}}}}).status_code == 400
    assert c.post("/prompt", json={"prompt": [1, 2]}).status_code == 400
    # the native validator reports our own problem types
    v = c.post("/ipgraph/validate", json={"graph": {"format": "ipgraph/1", "nodes": {
        "n": {"type": "Number", "inputs": {"value": -1}}}}}).json()
    assert v["valid"] is False and {p["type"] for p in v["problems"]} == {"out_of_range", "no_outputs"}
    # the server still works
    pid = c.post("/prompt", json={"prompt": api_chain()}).json()["prompt_id"]
    assert wait_status(c, pid)["status"] == "completed"


def test_node_failure_reports_execution_error(fake_server):
    c = fake_server.client()
    ws = WsClient(fake_server)
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 1}},
              "2": {"class_type": "Explode", "inputs": {"a": ["1", 0], "message": "bad thing"}},
              "3": {"class_type": "SaveNumber", "inputs": {"value": ["2", 0]}}}
    pid = c.post("/prompt", json={"prompt": prompt, "client_id": ws.sid}).json()["prompt_id"]
    events = ws.until_done(pid)
    err = events[-1]
    assert err[0] == "execution_error"
    assert err[1]["node_id"] == "2" and err[1]["node_type"] == "Explode"
    assert err[1]["exception_message"] == "bad thing" and err[1]["exception_type"] == "RuntimeError"
    assert err[1]["executed"] == ["1"] and isinstance(err[1]["traceback"], list)
    job = c.get(f"/api/jobs/{pid}").json()
    assert job["status"] == "failed" and job["execution_error"]["exception_message"] == "bad thing"
    assert c.get(f"/history/{pid}").json()[pid]["status"]["status_str"] == "error"


def test_interrupt_and_queue_delete(fake_server):
    c = fake_server.client()
    ws = WsClient(fake_server)
    RELEASE.clear()
    try:
        gated = {"1": {"class_type": "Number", "inputs": {"value": 1}},
                 "2": {"class_type": "Gate", "inputs": {"a": ["1", 0]}},
                 "3": {"class_type": "SaveNumber", "inputs": {"value": ["2", 0]}}}
        p1 = c.post("/prompt", json={"prompt": gated, "client_id": ws.sid}).json()["prompt_id"]
        p2 = c.post("/prompt", json={"prompt": api_chain(), "client_id": ws.sid}).json()["prompt_id"]
        p3 = c.post("/prompt", json={"prompt": api_chain(value=3), "client_id": ws.sid}).json()["prompt_id"]
        ws.until(lambda t, d: t == "executing" and d.get("node") == "2")
        q = c.get("/api/queue").json()
        assert [i[1] for i in q["queue_running"]] == [p1] and [i[1] for i in q["queue_pending"]] == [p2, p3]
        assert c.get("/api/prompt").json() == {"exec_info": {"queue_remaining": 3}}
        assert c.post("/api/queue", json={"delete": [p2]}).status_code == 200
        active = c.get("/api/jobs", params={"status": "in_progress,pending"}).json()["jobs"]
        assert {j["id"]: j["status"] for j in active} == {p1: "in_progress", p3: "pending"}
        # interrupt naming another prompt does nothing; naming the running one stops it
        c.post("/api/interrupt", json={"prompt_id": p3})
        time.sleep(0.1)
        assert c.get(f"/api/jobs/{p1}").json()["status"] == "in_progress"
        c.post("/api/interrupt", json={"prompt_id": p1})
        events = ws.until_done(p1)
        assert events[-1][0] == "execution_interrupted" and events[-1][1]["node_id"] == "2"
        assert events[-1][1]["executed"] == ["1"]
        assert wait_status(c, p3)["status"] == "completed"
        assert c.get(f"/api/jobs/{p1}").json()["status"] == "cancelled"
        assert c.get(f"/api/jobs/{p2}").json()["status"] == "cancelled"
        # cancel via /api/jobs/{id}/cancel, and queue clear
        p4 = c.post("/prompt", json={"prompt": gated}).json()["prompt_id"]
        p5 = c.post("/prompt", json={"prompt": api_chain(value=4)}).json()["prompt_id"]
        wait_status(c, p4, ("in_progress",))
        c.post("/api/queue", json={"clear": True})
        assert c.post(f"/api/jobs/{p4}/cancel").json() == {"cancelled": True}
        assert wait_status(c, p4)["status"] == "cancelled" and wait_status(c, p5)["status"] == "cancelled"
    finally:
        RELEASE.set()


def test_upload_view_and_path_safety(fake_server, tmp_path):
    c = fake_server.client()
    data_dir = fake_server.config.data_dir
    r = c.post("/api/upload/image", files={"image": ("../../evil name.png", png_bytes(), "image/png")},
               data={"type": "input", "subfolder": ""})
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "evil name.png", "subfolder": "", "type": "input"}
    assert (data_dir / "input" / "evil name.png").is_file()
    # same name, other content -> renamed; same content -> reused
    r2 = c.post("/upload/image", files={"image": ("evil name.png", png_bytes(color=(9, 9, 9)), "image/png")})
    assert r2.json()["name"] == "evil name (1).png"
    r3 = c.post("/upload/image", files={"image": ("evil name.png", png_bytes(), "image/png")})
    assert r3.json()["name"] == "evil name.png"
    # the user's file name is kept (a workflow names it): only folder parts are taken out
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="JPEG")
    assert c.post("/upload/image", files={"image": ("x.png", buf.getvalue(), "image/png")}).json()["name"] == "x.png"
    assert c.post("/upload/image", files={"image": ("photo.jpeg", buf.getvalue(), "image/jpeg")}
                  ).json()["name"] == "photo.jpeg"
    assert c.post("/upload/image", files={"image": ("my photo+1 é.jpg", buf.getvalue(), "image/jpeg")}
                  ).json()["name"] == "my photo+1 é.jpg"
    assert c.post("/upload/image", files={"image": ("page.html", buf.getvalue(), "image/jpeg")}
                  ).json()["name"] == "page.html.jpg"
    # the object_info combo lists uploaded images
    info = c.get("/api/object_info/LoadFakeImage").json()["LoadFakeImage"]["input"]["required"]["image"]
    assert "evil name.png" in info[0] and info[1]["image_upload"] is True
    # not an image, a decompression bomb, too many pixels, too many bytes, bad subfolder
    assert c.post("/upload/image", files={"image": ("a.png", b"<script>", "image/png")}).status_code == 400
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, format="PNG")  # ~50 KB on disk, 400 Mpx decoded
    r = c.post("/upload/image", files={"image": ("bomb.png", bomb.getvalue(), "image/png")})
    assert r.status_code == 400 and "pixels" in r.json()["error"]["message"]
    big = png_bytes(size=(1100, 1000))
    assert c.post("/upload/image", files={"image": ("big.png", big, "image/png")}).status_code == 400
    for sub in ("../x", "/abs", "a/../../b", "..\\..", "C:/x"):
        r = c.post("/upload/image", files={"image": ("s.png", png_bytes(), "image/png")}, data={"subfolder": sub})
        assert r.status_code in (400, 403), sub
    # form fields are not URL-decoded: "..%2F.." is just an odd folder name inside the input folder
    r = c.post("/upload/image", files={"image": ("s.png", png_bytes(), "image/png")}, data={"subfolder": "..%2F.."})
    assert r.status_code == 200 and (data_dir / "input" / "..%2F.." / "s.png").is_file()
    assert c.post("/upload/image", files={"image": ("s.png", png_bytes(), "image/png")},
                  data={"type": "output"}).status_code == 400
    huge = b"\0" * (fake_server.config.max_upload_bytes + 2 * 1024 * 1024)
    assert c.post("/upload/image", files={"image": ("h.png", huge, "image/png")}).status_code == 413
    # /view: the uploaded file is readable; nothing outside the folder is
    assert c.get("/view", params={"filename": "evil name.png", "type": "input"}).status_code == 200
    secret = data_dir / "ipgraph.sqlite"
    assert secret.exists()
    outside = tmp_path / "outside.png"
    outside.write_bytes(png_bytes())
    os.symlink(outside, data_dir / "output" / "link.png")
    os.symlink(tmp_path, data_dir / "output" / "linkdir")
    attempts = [
        {"filename": "../ipgraph.sqlite"}, {"filename": "ipgraph.sqlite", "subfolder": ".."},
        {"filename": str(secret)}, {"filename": "x", "subfolder": str(tmp_path)},
        {"filename": "..%2Fipgraph.sqlite"}, {"filename": "../../outside.png"}, {"filename": "link.png"},
        {"filename": "outside.png", "subfolder": "linkdir"}, {"filename": "..\\ipgraph.sqlite"},
        {"filename": "ipgraph.sqlite", "type": "../"}, {"filename": "a\x00.png"},
    ]
    for params in attempts:
        r = c.get("/api/view", params=params)
        assert r.status_code in (400, 403, 404), params
        assert b"SQLite" not in r.content
    # raw, already-encoded separators in the URL
    for raw in ("/api/view?filename=..%2Fipgraph.sqlite", "/api/view?filename=%2E%2E%2Fipgraph.sqlite",
                "/api/view?filename=ipgraph.sqlite&subfolder=%2E%2E", "/api/view?filename=%2Fetc%2Fpasswd"):
        r = c.get(raw)
        assert r.status_code in (400, 403, 404), raw
    # userdata cannot escape either
    assert c.get("/api/userdata/..%2F..%2Fipgraph.sqlite").status_code in (400, 403, 404)
    assert c.post("/api/userdata/..%2Fescape.json", content=b"{}").status_code in (400, 403, 404)
    assert not (data_dir / "user" / "escape.json").exists()


def test_restart_keeps_queue_and_history(tmp_path):
    """A hard kill mid-job: after the restart the interrupted job runs again (attempt 2), queued ones run, and
    finished results stay intact (server/store.py, leases)."""
    models = tmp_path / "models"
    data = tmp_path / "data"
    runtime = FakeRuntime(data, models)
    s1 = LiveServer(data, registry=REGISTRY, runtime=runtime, graphs_dir=tmp_path).start()
    c = s1.client()
    RELEASE.clear()
    try:
        done = c.post("/prompt", json={"prompt": api_chain(value=11)}).json()["prompt_id"]
        wait_status(c, done)
        gated = {"1": {"class_type": "Number", "inputs": {"value": 1}},
                 "2": {"class_type": "Gate", "inputs": {"a": ["1", 0]}},
                 "3": {"class_type": "SaveNumber", "inputs": {"value": ["2", 0]}}}
        running = c.post("/prompt", json={"prompt": gated}).json()["prompt_id"]
        queued = c.post("/prompt", json={"prompt": api_chain(value=12)}).json()["prompt_id"]
        wait_status(c, running, ("in_progress",))
        s1.stop()
        c.close()
    finally:
        RELEASE.set()
    # the graceful stop gave the running job back; make the rows look like a hard kill left them
    import sqlite3

    db = sqlite3.connect(data / "ipgraph.sqlite")
    db.execute("UPDATE jobs SET status='running', attempts=1, worker='inprocess', lease_token='dead',"
               " lease_expires=1e12 WHERE id=?", (running,))
    db.commit()
    db.close()
    s2 = LiveServer(data, registry=REGISTRY, runtime=runtime, graphs_dir=tmp_path).start()
    try:
        c2 = s2.client()
        assert wait_status(c2, queued)["status"] == "completed"
        assert wait_status(c2, running)["status"] == "completed"
        assert c2.get(f"/ipgraph/jobs/{running}").json()["attempts"] == 2
        hist = c2.get("/api/history").json()
        assert {done, running, queued} <= set(hist)
        img = hist[done]["outputs"]["3"]["images"][0]
        assert c2.get("/api/view", params=img).status_code == 200
        native = c2.get(f"/ipgraph/jobs/{done}").json()
        assert native["status"] == "completed" and native["images"][0]["filename"] == img["filename"]
    finally:
        s2.stop()


def test_graceful_stop_requeues_running_job(tmp_path):
    """Ctrl-C is not the job's fault: the running job goes back to the queue, its attempt not counted."""
    data = tmp_path / "data"
    s = LiveServer(data, registry=REGISTRY, runtime=FakeRuntime(data, tmp_path), graphs_dir=tmp_path).start()
    RELEASE.clear()
    try:
        c = s.client()
        gated = {"1": {"class_type": "Number", "inputs": {"value": 1}},
                 "2": {"class_type": "Gate", "inputs": {"a": ["1", 0]}},
                 "3": {"class_type": "SaveNumber", "inputs": {"value": ["2", 0]}}}
        pid = c.post("/prompt", json={"prompt": gated}).json()["prompt_id"]
        wait_status(c, pid, ("in_progress",))
    finally:
        s.stop()
        RELEASE.set()
    s2 = LiveServer(data, registry=REGISTRY, runtime=FakeRuntime(data, tmp_path), graphs_dir=tmp_path).start()
    try:
        c2 = s2.client()
        assert wait_status(c2, pid)["status"] == "completed"
        assert c2.get(f"/ipgraph/jobs/{pid}").json()["attempts"] == 1
    finally:
        s2.stop()


def test_token_auth(tmp_path):
    import httpx
    from websockets.exceptions import InvalidStatus

    data = tmp_path / "data"
    s = LiveServer(data, registry=REGISTRY, runtime=FakeRuntime(data, tmp_path), graphs_dir=tmp_path,
                   token="s3cret").start()
    try:
        bare = httpx.Client(base_url=s.url)
        for path in ("/api/object_info", "/object_info", "/ipgraph/nodes", "/api/view?filename=x", "/docs-api",
                     "/openapi.json", "/api/settings", "/"):
            assert bare.get(path).status_code == 401, path
        assert bare.post("/api/prompt", json={"prompt": api_chain()}).status_code == 401
        assert bare.get("/api/object_info", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert s.client().get("/api/object_info").status_code == 200
        # ?token= works and sets a cookie the browser then uses
        r = bare.get("/api/users", params={"token": "s3cret"})
        assert r.status_code == 200 and "ipgraph_token" in r.headers["set-cookie"]
        assert "HttpOnly" in r.headers["set-cookie"]
        assert bare.get("/api/users").status_code == 200  # the cookie jar now carries it
        with pytest.raises(InvalidStatus):
            WsClient(s, "nobody")
        ws = WsClient(s, "someone", token="s3cret")
        pid = s.client().post("/prompt", json={"prompt": api_chain(), "client_id": "someone"}).json()["prompt_id"]
        assert ws.until_done(pid)[-1][0] == "execution_success"
        ws.close()
    finally:
        s.stop()


def test_cross_origin_and_host_checks(fake_server):
    c = fake_server.client()
    assert c.post("/api/prompt", json={"prompt": api_chain()},
                  headers={"Origin": "http://evil.example"}).status_code == 403
    assert c.get("/api/object_info", headers={"Host": "evil.example"}).status_code == 403
    same = f"http://127.0.0.1:{fake_server.port}"
    assert c.get("/api/users", headers={"Origin": same}).status_code == 200


def test_object_info_bootstrap_and_workflows(fake_server):
    c = fake_server.client()
    info = c.get("/api/object_info").json()
    slow = info["Slow"]
    assert slow["input"]["required"]["a"] == ["NUMBER", {}]
    assert slow["input"]["required"]["steps"][0] == "INT" and slow["input"]["required"]["steps"][1]["max"] == 50
    assert slow["input"]["required"]["seed"][1]["control_after_generate"] is True
    assert slow["input_order"]["required"] == ["a", "steps", "delay", "seed", "preview"]
    assert info["Color"]["input"]["required"]["mode"] == [["red", "green", "blue"], {"default": "red"}]
    assert info["FakeCheckpoint"]["input"]["required"]["name"][0] == ["tiny.safetensors"]
    assert info["SaveNumber"]["output_node"] is True and info["Number"]["output_name"] == ["number"]
    for key in ("name", "display_name", "description", "category", "output_node", "python_module"):
        assert key in slow
    assert list(c.get("/object_info/Color").json()) == ["Color"]
    # bootstrap endpoints the editor needs answer JSON
    assert c.get("/api/users").json() == {"storage": "server", "migrated": True}
    settings = c.get("/api/settings").json()
    assert settings["Comfy.TutorialCompleted"] is True and settings["Comfy.Notification.ShowVersionUpdates"] is False
    assert c.post("/api/settings/Comfy.ColorPalette", json="light").status_code == 200
    assert c.get("/api/settings/Comfy.ColorPalette").json() == "light"
    assert c.post("/api/settings", json={"A.b": 1}).status_code == 200 and c.get("/api/settings").json()["A.b"] == 1
    for path in ("/api/extensions", "/api/embeddings", "/api/i18n", "/api/features", "/api/system_stats",
                 "/api/experiment/models", "/api/global_subgraphs"):
        r = c.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json"), path
    assert c.get("/api/experiment/models/checkpoints").json() == [{"name": "tiny.safetensors", "pathIndex": 0}]
    assert c.get("/docs-api").status_code == 200
    # a bundled ipgraph/1 graph appears as a workflow, converted to the editor's format
    graph = {"format": "ipgraph/1", "nodes": {
        "num": {"type": "Number", "inputs": {"value": 4}},
        "slow": {"type": "Slow", "inputs": {"a": {"node": "num", "output": "number"}, "steps": 2, "seed": 42}},
        "col": {"type": "Color", "inputs": {"a": {"node": "slow", "output": "number"}, "mode": "blue"}},
        "save": {"type": "SaveNumber", "inputs": {"value": {"node": "col", "output": "number"}}}},
        "ui": {"positions": {"save": [900, 10]}}}
    (fake_server.config.graphs_dir / "demo.json").write_text(json.dumps(graph))
    listing = c.get("/api/userdata", params={"dir": "workflows", "recurse": "true", "split": "false",
                                             "full_info": "true"}).json()
    assert [e["path"] for e in listing] == ["demo.json"]
    wf = c.get("/api/userdata/workflows%2Fdemo.json").json()
    nodes = {n["properties"]["ipgraph_id"]: n for n in wf["nodes"]}
    assert nodes["slow"]["widgets_values"] == [2, 0.0, 42, "fixed", True]
    assert nodes["col"]["widgets_values"] == ["blue"]
    assert nodes["save"]["pos"] == [900.0, 10.0]
    assert nodes["num"]["pos"][0] < nodes["slow"]["pos"][0] < nodes["col"]["pos"][0]
    assert len(wf["links"]) == 3 and wf["last_link_id"] == 3
    link = next(lk for lk in wf["links"] if lk[3] == nodes["slow"]["id"])
    assert link[1] == nodes["num"]["id"] and link[2] == 0 and link[4] == 0 and link[5] == "NUMBER"
    assert nodes["slow"]["inputs"][0]["link"] == link[0] and nodes["num"]["outputs"][0]["links"] == [link[0]]
    # saving a workflow, listing it, refusing to overwrite, moving and deleting it
    body = json.dumps({"nodes": []}).encode()
    r = c.post("/api/userdata/workflows%2Fmine.json", params={"overwrite": "false", "full_info": "true"},
               content=body)
    assert r.status_code == 200 and r.json()["path"] == "workflows/mine.json"
    assert c.post("/api/userdata/workflows%2Fmine.json", params={"overwrite": "false"}, content=body).status_code == 409
    assert "mine.json" in c.get("/api/userdata", params={"dir": "workflows"}).json()
    assert c.post("/api/userdata/workflows%2Fmine.json/move/workflows%2Fours.json").status_code == 200
    assert c.get("/api/userdata/workflows%2Fours.json").content == body
    assert c.delete("/api/userdata/workflows%2Fours.json").status_code == 204
    assert c.get("/api/userdata/workflows%2Fours.json").status_code == 404


def test_native_api(fake_server):
    c = fake_server.client()
    doc = {"format": "ipgraph/1", "nodes": {
        "n": {"type": "Number", "inputs": {"value": 3}},
        "s": {"type": "SaveNumber", "inputs": {"value": {"node": "n", "output": "number"}}}}}
    r = c.post("/ipgraph/jobs", json={"graph": doc})
    assert r.status_code == 202
    job_id = r.json()["id"]
    deadline = time.time() + 10
    while c.get(f"/ipgraph/jobs/{job_id}").json()["status"] != "completed":
        assert time.time() < deadline
        time.sleep(0.05)
    out = c.get(f"/ipgraph/jobs/{job_id}/outputs").json()
    assert out["status"] == "completed" and len(out["images"]) == 1
    assert c.get(out["images"][0]["url"]).status_code == 200
    assert c.get("/ipgraph/jobs").json()["total"] == 1
    assert "Slow" in c.get("/ipgraph/nodes").json()
    assert c.get("/ipgraph/models").json() == {"checkpoints": ["tiny.safetensors"]}
    bad = c.post("/ipgraph/jobs", json={"graph": {"format": "ipgraph/1", "nodes": {"x": {"type": "Nope"}}}})
    assert bad.status_code == 400 and bad.json()["problems"][0]["type"] == "unknown_node_type"
    assert c.post("/ipgraph/jobs", json={"graph": "nope"}).status_code == 400
    assert c.post(f"/ipgraph/jobs/{job_id}/cancel").json() == {"cancelled": False}
    assert c.get("/ipgraph/jobs/nope").status_code == 404
