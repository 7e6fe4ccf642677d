"""Hostile requests against a running stack: every one gets an answer below 500, and the service
still serves a normal prediction afterwards.

    python -m benchmarks.hostile               # starts its own stack (own ports and home), ~4 min
    python -m benchmarks.hostile --url URL --keys FILE [--controller-url URL]  # a running stack and its keys

The catalogue: corrupt, spoofed and bomb images, every pixel layout Pillow decodes, oversized and
deeply nested bodies, malformed multipart, forged and out-of-range ids, path traversal in image
ids, wrong methods and huge headers. Each case names the answer it expects (a 2xx for odd but
valid images, a 4xx otherwise; a huge header either, as the HTTP server in front decides).

Last line JSON: ``cases``, ``by_status_class``, ``five_xx`` (goal 0), ``unanswered`` (goal 0),
``unexpected`` (cases answered other than expected), ``healthy_after`` (goal true) and
``role_matrix_mismatches`` (goal 0: every route of the gateway and of the rollout controller called
as every role and with no key; ``controller_checked`` says the controller's were).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import shutil
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

Call = Callable[[httpx.Client], httpx.Response]


@dataclass(frozen=True)
class Case:
    name: str
    expect: str  # "2xx", "4xx", or "2xx|4xx" where the server in front decides (header limits)
    call: Call


def _encoded(img: Image.Image, fmt: str = "PNG", **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _declaring(png: bytes, width: int, height: int) -> bytes:
    """``png`` with its header claiming ``width`` x ``height`` (a bomb's header, a small file)."""
    ihdr = b"IHDR" + width.to_bytes(4, "big") + height.to_bytes(4, "big") + png[24:29]
    return png[:12] + ihdr + zlib.crc32(ihdr).to_bytes(4, "big") + png[33:]


def _post_image(data: bytes, ctype: str = "image/png") -> Call:
    return lambda c: c.post("/v1/predict", content=data, headers={"content-type": ctype})


def _post_json(path: str, body: bytes) -> Call:
    return lambda c: c.post(path, content=body, headers={"content-type": "application/json"})


def _chunks(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    yield from (data[i : i + size] for i in range(0, len(data), size))


def image_cases() -> list[Case]:
    """Images: what must be refused, and the odd layouts that must decode."""
    grey16 = Image.fromarray(np.full((64, 64), 40_000, np.uint16))  # I;16
    palette = Image.new("P", (64, 64), 0)
    frames = [Image.new("L", (64, 64), 30), Image.new("L", (64, 64), 220)]
    exif = Image.Exif()
    exif[0x0112] = 6
    png = _encoded(Image.new("RGB", (64, 64), (90, 120, 150)))
    jpeg = _encoded(Image.new("RGB", (64, 64), 90), "JPEG", progressive=True)
    refused = {
        "text posing as PNG": b"definitely not an image",
        "empty body": b"",
        "truncated PNG": png[: len(png) // 2],
        "PNG signature then garbage": b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,
        "pixel bomb (a PNG declaring 30000x30000)": _declaring(png, 30_000, 30_000),
        "GIF declaring 65535x65535": b"GIF89a\xff\xff\xff\xff\x00\x00\x00;",
        "EPS (would run Ghostscript)": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n",
        "PSD": b"8BPS\x00\x01" + b"\x00" * 64,
        "SVG": b"<svg xmlns='http://www.w3.org/2000/svg' width='8' height='8'/>",
        "PDF": b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF",
        "PPM (not an accepted format)": _encoded(Image.new("RGB", (8, 8)), "PPM"),
        "JPEG of 80 scans": jpeg + b"\xff\xda" * 80,
        "ICO": _encoded(Image.new("RGB", (16, 16)), "ICO"),
    }
    decoded = {
        "16-bit grey PNG": _encoded(grey16),
        "float TIFF": _encoded(Image.fromarray(np.full((64, 64), 0.5, np.float32)), "TIFF"),
        "CMYK JPEG": _encoded(Image.new("CMYK", (64, 64), (0, 200, 200, 0)), "JPEG"),
        "transparent RGBA PNG": _encoded(Image.new("RGBA", (64, 64), (0, 0, 0, 0))),
        "palette PNG with a transparent index": _encoded(palette, transparency=0),
        "animated GIF": _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "EXIF-rotated JPEG": _encoded(Image.new("RGB", (80, 40), 60), "JPEG", exif=exif),
        "1-bit PNG": _encoded(Image.new("1", (64, 64), 1)),
        "1x1 pixel": _encoded(Image.new("RGB", (1, 1))),
        "a 4000x1 strip": _encoded(Image.new("L", (4000, 1))),
    }
    return [Case(f"image: {n}", "4xx", _post_image(d)) for n, d in refused.items()] + [
        Case(f"image: {n}", "2xx", _post_image(d)) for n, d in decoded.items()
    ]


def body_cases() -> list[Case]:
    """Bodies: sizes, nesting, framing and types."""
    png = _encoded(Image.new("RGB", (32, 32), 70))
    too_big = b"0" * (20 * 1024 * 1024)
    return [
        Case("body: 20 MB image, declared", "4xx", _post_image(too_big)),
        Case("body: 20 MB image, chunked", "4xx", lambda c: c.post("/v1/predict", content=_chunks(too_big))),
        Case("body: image_b64 not base64", "4xx", _post_json("/v1/predict", b'{"image_b64": "***"}')),
        Case(
            "body: image_b64 nested 200,000 deep",
            "4xx",
            _post_json("/v1/predict", b'{"image_b64": ' + b"[" * 200_000),
        ),
        Case("body: JSON list for an image", "4xx", _post_json("/v1/predict", b'["a"]')),
        Case(
            "body: multipart without a file",
            "4xx",
            lambda c: c.post("/v1/predict", files={"meta": (None, "text only")}),
        ),
        Case(
            "body: multipart whose boundary never comes",
            "4xx",
            lambda c: c.post(
                "/v1/predict",
                content=b"--x\r\nContent-Disposition: form-data; name=image; filename=a.png\r\n\r\n" + png,
                headers={"content-type": "multipart/form-data; boundary=y"},
            ),
        ),
        Case("body: image with a wrong content type", "2xx", _post_image(png, "application/xml")),
        Case("body: 1 MB feedback", "4xx", _post_json("/v1/feedback", b'{"label": "' + b"x" * 10**6 + b'"}')),
        Case(
            "body: 1 MB feedback, chunked",
            "4xx",
            lambda c: c.post(
                "/v1/feedback",
                content=_chunks(b'{"label": "' + b"x" * 10**6 + b'"}'),
                headers={"content-type": "application/json"},
            ),
        ),
        Case("body: feedback nested 50,000 deep", "4xx", _post_json("/v1/feedback", b"[" * 50_000)),
        Case("body: feedback not JSON", "4xx", _post_json("/v1/feedback", b"{not json")),
        Case(
            "body: feedback of wrong types",
            "4xx",
            _post_json("/v1/feedback", b'{"prediction_id": 5, "label": []}'),
        ),
    ]


def id_cases(keys: dict[str, str]) -> list[Case]:
    """Ids and paths: forged, out of range, traversing (review tasks and images as a reviewer,
    whose routes they are: an app would be refused before its ids are read)."""
    lease = {"label": "x", "lease_token": "t"}
    rv = {"X-API-Key": keys["reviewer"]}
    return [
        Case(
            "id: prediction id with a non-ASCII tag",
            "4xx",
            lambda c: c.post("/v1/feedback", json={"prediction_id": "0" * 32 + "." + "é" * 16, "label": "x"}),
        ),
        Case(
            "id: prediction id never issued",
            "4xx",
            lambda c: c.post(
                "/v1/feedback", json={"prediction_id": "0" * 32 + ".0123456789abcdef", "label": "x"}
            ),
        ),
        Case(
            "id: prediction id of 10,000 characters",
            "4xx",
            lambda c: c.post("/v1/feedback", json={"prediction_id": "a" * 10_000, "label": "x"}),
        ),
        Case(
            "id: label with NUL",
            "4xx",
            lambda c: c.post(
                "/v1/feedback", json={"prediction_id": "0" * 32 + ".0123456789abcdef", "label": "a\x00"}
            ),
        ),
        Case(
            "id: task 10^20", "4xx", lambda c: c.post("/v1/review/" + "1" + "0" * 20, json=lease, headers=rv)
        ),
        Case("id: task -1", "4xx", lambda c: c.post("/v1/review/-1", json=lease, headers=rv)),
        Case(
            "id: task 'abc'",
            "4xx",
            lambda c: c.post("/v1/review/abc/skip", json={"lease_token": "t"}, headers=rv),
        ),
        Case(
            "id: task that does not exist",
            "4xx",
            lambda c: c.post("/v1/review/987654", json=lease, headers=rv),
        ),
        Case(
            "id: a key of 10,000 characters",
            "4xx",
            lambda c: c.get("/v1/review/next", headers={"X-API-Key": "nlk_" + "r" * 10_000}),
        ),
        Case(
            "path: image ../../secret.key",
            "4xx",
            lambda c: c.get("/v1/images/..%2F..%2Fsecret.key", headers=rv),
        ),
        Case("path: image id with NUL", "4xx", lambda c: c.get("/v1/images/" + "0" * 63 + "%00", headers=rv)),
        Case("path: image that does not exist", "4xx", lambda c: c.get("/v1/images/" + "0" * 64, headers=rv)),
        Case("path: unknown route", "4xx", lambda c: c.get("/v1/../../etc/passwd")),
        Case("method: GET /v1/predict", "4xx", lambda c: c.get("/v1/predict")),
        Case(
            "header: 64 KB header",
            "2xx|4xx",
            lambda c: c.get("/v1/review/stats", headers={"x-junk": "j" * 65_536}),
        ),
    ]


def auth_cases(keys: dict[str, str]) -> list[Case]:
    """Credentials: none, made up, in the wrong scheme, or of another role."""
    png = _encoded(Image.new("RGB", (32, 32), 70))
    nobody = {"X-API-Key": ""}
    return [
        Case(
            "auth: predict without a key", "4xx", lambda c: c.post("/v1/predict", content=png, headers=nobody)
        ),
        Case(
            "auth: predict with a made-up key",
            "4xx",
            lambda c: c.post("/v1/predict", content=png, headers={"X-API-Key": "nlk_" + "A" * 43}),
        ),
        Case(
            "auth: a key in a Basic header",
            "4xx",
            lambda c: c.post(
                "/v1/predict", content=png, headers={**nobody, "Authorization": f"Basic {keys['app']}"}
            ),
        ),
        Case("auth: an app takes a review task", "4xx", lambda c: c.get("/v1/review/next")),
        Case(
            "auth: a reviewer reads the metrics",
            "4xx",
            lambda c: c.get("/metrics", headers={"X-API-Key": keys["reviewer"]}),
        ),
        Case(
            "auth: an operator predicts",
            "4xx",
            lambda c: c.post("/v1/predict", content=png, headers={"X-API-Key": keys["operator"]}),
        ),
        Case(
            "auth: an unsigned bearer token claiming admin",
            "4xx",
            lambda c: c.get("/metrics", headers={**nobody, "Authorization": f"Bearer {_unsigned_token()}"}),
        ),
    ] + (
        [
            Case(
                "auth: an app labels another app's prediction",
                "4xx",
                lambda c: c.post(
                    "/v1/feedback",
                    json={
                        "prediction_id": c.post("/v1/predict", content=png).json()["prediction_id"],
                        "label": "x",
                    },
                    headers={"X-API-Key": keys["other-app"]},
                ),
            )
        ]
        if "other-app" in keys
        else []
    )


def _unsigned_token() -> str:
    """A JWT with ``alg: none`` that names itself an admin (``nicheloop.tokens`` takes none)."""
    part = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({'sub': 'mallory', 'role': 'admin'})}."


def catalogue(keys: dict[str, str]) -> list[Case]:
    return image_cases() + body_cases() + id_cases(keys) + auth_cases(keys)


def role_matrix_mismatches(client: Any, keys: dict[str, str], *, app: Any = None) -> list[str]:
    """Every route of ``app`` (default: the gateway's) called through ``client`` as every role and
    with no key: what answered otherwise than its declared roles say (401 without a key, 403 for
    another role, neither for its own roles)."""
    from nicheloop.http import route_roles
    from nicheloop.keys import ROLES

    if app is None:
        from services.api import api as app

    wrong = []
    for (method, path), allowed in sorted(route_roles(app).items()):
        url = path.replace("{task_id}", "1").replace("{sha256}", "0" * 64).replace("{action}", "pause")
        for role in (*ROLES, None):
            headers = {"X-API-Key": keys[role] if role else ""}
            status = client.request(method, url, headers=headers, json={}).status_code
            if allowed is None:
                ok = status not in (401, 403)
            elif role is None:
                ok = status == 401
            else:
                ok = (status == 403) != (role in allowed)
            if not ok:
                wrong.append(f"{method} {path} as {role}: {status}")
    return wrong


def controller_mismatches(url: str, keys: dict[str, str]) -> list[str]:
    """:func:`role_matrix_mismatches` for the rollout controller at ``url`` (its route table read
    from an app over a scratch store: the routes are the code's, the answers the running one's)."""
    from nicheloop.rollouts import Rollouts
    from nicheloop.store import Store
    from rollout.operations import Operations
    from rollout.runner import controller_api

    with tempfile.TemporaryDirectory() as scratch:
        app = controller_api(Operations(Rollouts(Store(f"sqlite:///{scratch}/routes.db")), None))  # type: ignore[arg-type]
        with httpx.Client(base_url=url, timeout=60) as client:
            return role_matrix_mismatches(client, keys, app=app)


def run(client: httpx.Client, keys: dict[str, str], *, controller_url: str | None = None) -> dict[str, Any]:
    """Send every case through ``client`` (the ``app`` role's; ``keys`` holds one key per role);
    then check each route answers each role as declared (the controller's too, at
    ``controller_url``), and that the service is still ready and serves a prediction."""
    answered: dict[str, int | str] = {}
    cases = catalogue(keys)
    for case in cases:
        try:
            answered[case.name] = case.call(client).status_code
        except httpx.HTTPError as exc:  # the connection dropped or timed out: no answer
            answered[case.name] = type(exc).__name__
        print(f"{answered[case.name]!s:>5}  {case.name}", flush=True)
    png = _encoded(Image.new("RGB", (64, 64), (90, 120, 150)))
    normal = client.post("/v1/predict", content=png, headers={"content-type": "image/png"})
    ready = client.get("/readyz")
    mismatches = role_matrix_mismatches(client, keys)
    if controller_url:
        mismatches += [f"controller: {m}" for m in controller_mismatches(controller_url, keys)]
    expected = {case.name: case.expect for case in cases}
    classes = Counter(f"{s // 100}xx" if isinstance(s, int) else "none" for s in answered.values())
    return {
        "benchmark": "hostile",
        "cases": len(answered),
        "by_status_class": dict(sorted(classes.items())),
        "five_xx": classes.get("5xx", 0),
        "unanswered": classes.get("none", 0),
        "unexpected": {
            name: status
            for name, status in answered.items()
            if not (isinstance(status, int) and f"{status // 100}xx" in expected[name].split("|"))
        },
        "healthy_after": normal.status_code == 200 and ready.status_code == 200,
        "controller_checked": controller_url is not None,
        "role_matrix_mismatches": len(mismatches),
        "mismatched": mismatches,
    }


def _own_stack(home: Path) -> Any:
    from nicheloop.settings import Settings

    return Settings(
        home=home,
        kafka_port=49092,
        kafka_controller_port=49093,
        mlflow_port=45000,
        ray_port=46379,
        ray_worker_ports=(40000, 41999),
        serve_port=48000,
        ingress_ports=(48100, 48199),
        metrics_port=49100,
        controller_port=49110,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running stack's endpoint (default: start one)")
    parser.add_argument(
        "--keys",
        help="with --url: a JSON file of one key per role (e.g. $NICHELOOP_HOME/demo/demo-keys.json), "
        "and optionally a second app's as other-app",
    )
    parser.add_argument(
        "--controller-url", help="with --url: the rollout controller's, to check its roles too"
    )
    args = parser.parse_args()
    started = time.monotonic()
    if args.url:
        keys = json.loads(Path(args.keys).read_text())
        with httpx.Client(base_url=args.url, timeout=60, headers={"X-API-Key": keys["app"]}) as client:
            result = run(client, keys, controller_url=args.controller_url)
    else:
        from cli.demo import demo_keys, start_loop
        from deploy.local import stack
        from nicheloop.keys import ApiKeys
        from nicheloop.store import Store

        home = Path(tempfile.mkdtemp(prefix="nicheloop-hostile-"))
        settings = _own_stack(home)
        try:
            start_loop(settings, per_class=20, epochs=1)
            keys = demo_keys(settings)
            other, _ = ApiKeys(Store(settings.db_url)).create(
                name="hostile-other-app", role="app", created_by="benchmarks/hostile.py"
            )
            keys = {**keys, "other-app": other}
            with httpx.Client(
                base_url=settings.serve_url, timeout=60, headers={"X-API-Key": keys["app"]}
            ) as client:
                result = run(
                    client, keys, controller_url=f"http://{settings.host}:{settings.controller_port}"
                )
        finally:
            stack.down(settings)
            shutil.rmtree(home, ignore_errors=True)
    result["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
