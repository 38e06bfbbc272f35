"""LLM OS through the official openai client: a streamed chat, a batch and a fine-tune against `llmos dev`.

    llmos dev                                   # in another shell
    KEY=$(llmos keys create --owner me)
    python examples/openai_sdk.py --key $KEY    # pip install openai, if your venv lacks it

`--model` picks the chat model (default: the packaged SmolLM2-135M-Instruct); `--ft-model` the base of the
fine-tune (default: tiny-random-llama, which trains in seconds on a laptop CPU; SmolLM2 takes minutes).
"""

from __future__ import annotations

import argparse
import io
import json
import time

from openai import OpenAI

QUESTIONS = ["What is the capital of France?", "What is the capital of Japan?", "What is 2 + 2?",
             "Name a primary colour."]


def wait(get, done: tuple[str, ...], timeout: float):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while True:
        obj = get()
        if obj.status in done:
            return obj
        if time.monotonic() > deadline:
            raise SystemExit(f"still {obj.status} after {timeout:.0f}s: {obj.id}")
        time.sleep(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--key", required=True)
    ap.add_argument("--base-url", default="http://localhost:8000/v1")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--ft-model", default="tiny-random-llama")
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()
    client = OpenAI(base_url=args.base_url, api_key=args.key)

    print("== chat, streamed")
    pieces = 0
    for chunk in client.chat.completions.create(model=args.model, max_tokens=24, temperature=0, stream=True,
                                                messages=[{"role": "user", "content": QUESTIONS[0]}]):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces += 1
            print(chunk.choices[0].delta.content, end="", flush=True)
    print(f"\n({pieces} chunks)")

    print("== batch")
    lines = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": args.model, "max_tokens": 24, "temperature": 0,
                       "messages": [{"role": "user", "content": q}]}} for i, q in enumerate(QUESTIONS)]
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    batch_file = client.files.create(file=("questions.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(input_file_id=batch_file.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"example": "openai_sdk"})
    batch = wait(lambda: client.batches.retrieve(batch.id), ("completed", "failed", "cancelled", "expired"),
                 args.timeout)
    print(f"{batch.id}: {batch.status}, {batch.request_counts.completed}/{batch.request_counts.total} completed")
    if batch.output_file_id:
        for raw in client.files.content(batch.output_file_id).text.splitlines():
            line = json.loads(raw)
            answer = line["response"]["body"]["choices"][0]["message"]["content"]
            print(f"  {line['custom_id']}: {answer.strip()[:70]!r}")

    print("== fine-tune")
    examples = [{"messages": [{"role": "user", "content": f"Say the word {w}."},
                              {"role": "assistant", "content": w}]}
                for w in ("apple", "river", "cloud", "stone", "maple", "ember", "tide", "quartz")]
    train = client.files.create(file=("train.jsonl", io.BytesIO("".join(json.dumps(e) + "\n" for e in examples)
                                                                .encode())), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=args.ft_model, training_file=train.id, suffix="words",
                                         hyperparameters={"n_epochs": 2, "batch_size": 4})
    job = wait(lambda: client.fine_tuning.jobs.retrieve(job.id), ("succeeded", "failed", "cancelled"), args.timeout)
    print(f"{job.id}: {job.status}, model {job.fine_tuned_model}, {job.trained_tokens} trained tokens")
    for ev in reversed(client.fine_tuning.jobs.list_events(job.id, limit=100).data):
        print(f"  [{ev.type}] {ev.message}")
    for ck in client.fine_tuning.jobs.checkpoints.list(job.id):
        print(f"  checkpoint step {ck.step_number}: {ck.metrics}")
    if job.fine_tuned_model:
        r = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=8, temperature=0,
                                           messages=[{"role": "user", "content": "Say the word apple."}])
        print(f"  {job.fine_tuned_model} says: {r.choices[0].message.content!r}")
    if batch.status != "completed" or job.status != "succeeded":
        raise SystemExit(1)


if __name__ == "__main__":
    main()
