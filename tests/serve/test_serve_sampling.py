"""The server's fields for black-box tools, spoken to with the real `openai` client: seeded sampling (the decode
loop's own draws), n, stop strings, log-probabilities (checked against a teacher-forced forward pass),
`/v1/completions`, vLLM's chat-template fields, guards on each of these paths, and continuous batching (rows that
join a running batch get what they would get alone; a short request overtakes a long one)."""

import threading
import time
from dataclasses import dataclass

import openai
import pytest
import torch

from obliviate.engine.generation import decode
from obliviate.engine.hooks import Guard
from obliviate.engine.sampling import Sampling
from obliviate.models.encode import chat_text, prompt_ids, prompt_text
from obliviate.models.load import load_model
from obliviate.serve import chat_ids
from tests.serve.test_serve import QUESTIONS, REFUSAL, HaltOn, ask, served

LONG = "Tell me about the weather in a long sentence please, with details."


@pytest.fixture(scope="module")
def model_tok(target_dir):
    torch.set_num_threads(1)
    return load_model(str(target_dir))


def reference_logprobs(model, prompt: list[int], reply: list[int]) -> list[float]:
    """Each reply token's log-probability after the prompt and the reply before it (teacher-forced)."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + reply])).logits[0, len(prompt) - 1 : -1].float()
    return logits.log_softmax(-1)[torch.arange(len(reply)), torch.tensor(reply)].tolist()


def test_seeded_sampling_n_and_stop(model_tok):
    model, tok = model_tok
    q = QUESTIONS[0]
    ids = prompt_ids(tok, q)
    sampled = [
        decode(model, tok, [ids], max_new_tokens=12, sampling=Sampling(temperature=1.5, top_p=0.95, seed=s))[0]
        for s in (7, 8, 9)
    ]
    assert len({r.text for r in sampled}) > 1  # the seeds give different replies: the check below can fail
    greedy = decode(model, tok, [ids], max_new_tokens=24)[0]
    words = greedy.text.split()
    assert len(words) >= 3, greedy.text
    stop = " " + words[2]  # the reply ends before the third word's first occurrence
    with served(model_tok) as (_, client, _):
        kw = dict(max_tokens=12, temperature=1.5, top_p=0.95)
        for stream in (False, True):  # the decode loop's own draws, seeded per request
            assert ask(client, q, stream=stream, seed=7, **kw)[:2] == (sampled[0].text, sampled[0].finish_reason)
        r = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": q}], n=3, seed=7, **kw
        )  # choice i draws with seed + i
        assert [c.index for c in r.choices] == [0, 1, 2]
        assert [c.message.content for c in r.choices] == [s.text for s in sampled]
        assert r.usage.prompt_tokens == len(ids)
        assert r.usage.completion_tokens == sum(len(s.token_ids) for s in sampled)
        chunks = list(
            client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": q}], n=3, seed=7, stream=True, **kw
            )
        )
        got = ["", "", ""]
        for c in chunks:
            for ch in c.choices:
                got[ch.index] += ch.delta.content or ""
        assert got == [s.text for s in sampled]
        # temperature 0 (or unset) is greedy, whatever the seed
        assert ask(client, q, max_tokens=24, temperature=0, seed=3)[:2] == (greedy.text, greedy.finish_reason)
        want = greedy.text[: greedy.text.index(stop)].rstrip()
        for stream in (False, True):
            assert ask(client, q, stream=stream, max_tokens=24, stop=[stop, "zzz"])[:2] == (want, "stop")
            assert ask(client, q, stream=stream, max_tokens=24, stop="zzz")[:2] == (greedy.text, greedy.finish_reason)


def test_logprobs_match_a_teacher_forced_pass(model_tok):
    model, tok = model_tok
    q = QUESTIONS[1]
    ids = prompt_ids(tok, q)
    greedy = decode(model, tok, [ids], max_new_tokens=10)[0]
    kept = greedy.token_ids[:-1] if greedy.finish_reason == "stop" else greedy.token_ids  # EOS is not content
    ref = reference_logprobs(model, ids, kept)
    with served(model_tok) as (_, client, _):
        r = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": q}], max_tokens=10, logprobs=True, top_logprobs=3
        )
        items = r.choices[0].logprobs.content
        assert [i.logprob for i in items] == pytest.approx(ref, abs=1e-4)
        for i in items:
            assert len(i.top_logprobs) == 3 and i.bytes == list(i.token.encode())
            tops = [t.logprob for t in i.top_logprobs]
            assert tops == sorted(tops, reverse=True) and tops[0] == pytest.approx(i.logprob)  # greedy: the best
        assert "".join(i.token for i in items).strip() == r.choices[0].message.content
        streamed = []
        for c in client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": q}],
            max_tokens=10,
            logprobs=True,
            top_logprobs=3,
            stream=True,
        ):
            if c.choices and c.choices[0].logprobs:
                streamed += c.choices[0].logprobs.content
        assert [(i.token, i.logprob) for i in streamed] == [(i.token, i.logprob) for i in items]
        plain = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": q}], max_tokens=3)
        assert plain.choices[0].logprobs is None


def test_completions_take_raw_text_with_legacy_logprobs(model_tok):
    model, tok = model_tok
    text = "Vyrek Pellam was born in"
    ids = tok(text)["input_ids"]
    rep = decode(model, tok, [ids], max_new_tokens=8)[0]
    head = tok.decode(ids[-1:], skip_special_tokens=True)
    want = tok.decode(ids[-1:] + rep.token_ids, skip_special_tokens=True)[len(head) :]  # spaces kept
    kept = rep.token_ids[:-1] if rep.finish_reason == "stop" else rep.token_ids
    with served(model_tok, [HaltOn(word="forbidden")]) as (_, client, _):
        r = client.completions.create(model="tiny", prompt=text, max_tokens=8, logprobs=2)
        c = r.choices[0]
        assert (c.text, c.finish_reason, r.object) == (want, rep.finish_reason, "text_completion")
        assert r.usage.prompt_tokens == len(ids)
        lp = c.logprobs
        assert lp.token_logprobs == pytest.approx(reference_logprobs(model, ids, kept), abs=1e-4)
        assert "".join(lp.tokens) == want.rstrip() or "".join(lp.tokens) == want
        assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
        assert all(
            len(d) <= 3 and d[t] == pytest.approx(v) for d, t, v in zip(lp.top_logprobs, lp.tokens, lp.token_logprobs)
        )
        streamed = list(client.completions.create(model="tiny", prompt=text, max_tokens=8, logprobs=2, stream=True))
        assert "".join(s.choices[0].text for s in streamed) == want
        assert sum((s.choices[0].logprobs.tokens for s in streamed), []) == lp.tokens
        # the default budget is OpenAI's 16 tokens; a list of prompts gives n replies each, prompt-major
        r = client.completions.create(model="tiny", prompt=[text, "hi"], n=2)
        assert [c.index for c in r.choices] == [0, 1, 2, 3] and r.choices[0].text == r.choices[1].text
        assert r.usage.completion_tokens <= 4 * 16
        # the guard on this path too: every choice of a prompt it halts, streamed or not
        eos = {"ignore_eos": True}  # vLLM's field: the replies run past the guard's check at 2 tokens
        r = client.completions.create(model="tiny", prompt="a forbidden text", n=2, max_tokens=8, extra_body=eos)
        assert [(c.text, c.finish_reason) for c in r.choices] == [(REFUSAL, "content_filter")] * 2
        streamed = list(
            client.completions.create(
                model="tiny", prompt="a forbidden text", max_tokens=8, stream=True, extra_body=eos
            )
        )
        assert "".join(s.choices[0].text for s in streamed) == REFUSAL
        assert streamed[-1].choices[0].finish_reason == "content_filter"
        for bad in (dict(echo=True), dict(suffix="x"), dict(best_of=3), dict(logprobs=21), dict(prompt="")):
            with pytest.raises(openai.BadRequestError):
                client.completions.create(**{"model": "tiny", "prompt": text, **bad})


def test_vllm_chat_template_fields(model_tok):
    model, tok = model_tok
    user = [{"role": "user", "content": QUESTIONS[0]}]
    turn = user + [{"role": "assistant", "content": "He was born in"}]
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert chat_ids(tok, turn) == ids(chat_text(tok, turn, continue_final_message=True))  # the default: a prefill
    assert chat_ids(tok, turn, continue_final_message=True, add_generation_prompt=False) == chat_ids(tok, turn)
    assert chat_ids(tok, turn, add_generation_prompt=True) == ids(prompt_text(tok, turn))  # closed, a new turn
    assert chat_ids(tok, turn, continue_final_message=False, add_generation_prompt=False) == ids(chat_text(tok, turn))
    closed = decode(model, tok, [ids(prompt_text(tok, turn))], max_new_tokens=8)[0]
    with served(model_tok) as (_, client, _):
        extra = {"continue_final_message": False}  # a closed turn: a new reply, stripped as chat replies are
        assert ask(client, turn, max_tokens=8, extra_body=extra)[:2] == (closed.text, closed.finish_reason)
        text = ask(client, turn, max_tokens=8, extra_body={"continue_final_message": True})[0]
        assert text.startswith(" ")  # continued: the continuation keeps its leading space


@dataclass
class Slow(Guard):
    """Every step: sleeps `pause` s, and keeps the rows whose request says LONG from ending (EOS banned)."""

    name = "slow"
    eos: int = 2
    pause: float = 0.01

    def process_logits(self, step, ids, logits, rows):
        time.sleep(self.pause)
        for r, row in enumerate(rows):
            if "LONG" in (row.text or ""):
                logits[r, self.eos] = float("-inf")
        return logits


def overtake(client, long_tokens=100):
    """A long streamed request, and a short one sent once the long one streams: their finish times."""
    started, done = threading.Event(), {}

    def long():
        for c in client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "LONG story"}], max_tokens=long_tokens, stream=True
        ):
            if c.choices and c.choices[0].delta.content:
                started.set()
        done["long"] = time.perf_counter()

    t = threading.Thread(target=long)
    t.start()
    assert started.wait(60)
    assert ask(client, "hi", max_tokens=3)[1] in ("stop", "length")
    done["short"] = time.perf_counter()
    t.join(120)
    return done


def test_continuous_batching_a_short_request_overtakes_a_long_one(model_tok):
    tok = model_tok[1]
    for batching in ("continuous", "static"):
        with served(model_tok, [Slow(eos=tok.eos_token_id)], batching=batching) as (engine, client, _):
            done = overtake(client)
            if batching == "continuous":
                assert done["short"] < done["long"] and max(engine.step_rows) == 2  # it joined the running batch
            else:
                assert done["short"] > done["long"] and max(engine.step_rows) == 1  # it waited for the batch's end


@dataclass
class Probe(Guard):
    """Every 3 tokens: probes the cache (the assistant header again, and 2 tokens of lookahead) and checks the
    shapes it gets back, as ADA does; halts nothing."""

    name = "probe"
    every = 3
    header: tuple = (1, 2)

    def on_step(self, step, ids, session):
        res = session.probe(list(self.header), lookahead=2, hidden=True)
        assert res["logits"].shape[0] == len(session.rows) == ids.shape[0] and ids.shape[1] == step
        assert res["lookahead"].shape == (len(session.rows), 2) and res["hidden"][-1].shape[0] == len(session.rows)


def test_rows_that_join_a_running_batch_get_what_they_get_alone(model_tok, caplog):
    """Greedy and seeded replies of requests that join mid-batch, with a guard that probes the cache and one that
    halts, equal `decode` of each request alone with the same guards."""
    model, tok = model_tok
    guards = [Slow(eos=tok.eos_token_id, pause=0.002), Probe(), HaltOn()]
    qs = QUESTIONS[:3]
    alone = {q: decode(model, tok, [prompt_ids(tok, q)], texts=[q], guards=guards, max_new_tokens=16)[0] for q in qs}
    seeded = decode(
        model,
        tok,
        [prompt_ids(tok, qs[1])],
        texts=[qs[1]],
        guards=guards,
        max_new_tokens=16,
        sampling=Sampling(temperature=1.2, seed=11),
    )[0]
    long_alone = decode(
        model, tok, [prompt_ids(tok, "LONG " + LONG)], texts=["LONG " + LONG], guards=guards, max_new_tokens=60
    )[0]
    assert alone[qs[0]].finish_reason == "content_filter"  # HaltOn: Vyrek is halted
    with served(model_tok, guards) as (engine, client, _):
        got, threads = {}, []

        def long():
            chunks = list(
                client.chat.completions.create(
                    model="tiny",
                    messages=[{"role": "user", "content": "LONG " + LONG}],
                    max_tokens=60,
                    stream=True,
                )
            )
            got["long"] = (
                "".join(c.choices[0].delta.content or "" for c in chunks),
                chunks[-1].choices[0].finish_reason,
            )

        threads.append(threading.Thread(target=long))
        threads[0].start()
        for _ in range(600):
            if engine.step_rows:
                break
            time.sleep(0.01)
        for q in qs:  # one at a time: each joins at a different step of the long reply
            time.sleep(0.05)
            got[q] = ask(client, q, max_tokens=16)[:2]
        got["seeded"] = ask(client, qs[1], max_tokens=16, temperature=1.2, seed=11)[:2]
        threads[0].join(120)
        assert max(engine.step_rows) >= 2  # they did run beside the long reply
    assert not [r for r in caplog.records if r.name == "obliviate.serve"]  # no step failed (and was rerun alone)
    assert got["long"] == (long_alone.text, long_alone.finish_reason)
    for q in qs:
        assert got[q] == (alone[q].text, alone[q].finish_reason), q
    assert got["seeded"] == (seeded.text, seeded.finish_reason)
