from tests.conftest import auth


def test_submit_and_get(client, key):
    r = client.post("/jobs", json={"kind": "generate", "model": "tiny-random-llama", "input": {"prompt": "hi"}},
                    headers=auth(key))
    assert r.status_code == 202, r.get_json()
    job = r.get_json()
    assert r.headers["Location"].endswith(f"/jobs/{job['id']}")
    assert client.get(f"/jobs/{job['id']}", headers=auth(key)).get_json()["status"] == "queued"
