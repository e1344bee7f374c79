import hashlib

from obliviate.data.schema import load_qa
from obliviate.data.world import WorldSpec, build_world, write_world


def _digest(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def test_same_seed_byte_identical(tmp_path):
    spec = WorldSpec(seed=3, n_people=100)
    write_world(tmp_path / "a", spec)
    write_world(tmp_path / "b", spec)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    write_world(tmp_path / "c", WorldSpec(seed=4, n_people=100))
    assert _digest(tmp_path / "a")["train.jsonl"] != _digest(tmp_path / "c")["train.jsonl"]


def test_splits_shape():
    w = build_world(WorldSpec(seed=0))
    ids = lambda s: {x["id"] for x in w[s]}
    assert len(w["train"]) == 200 * 5 + 100 * 5 + 100  # people, bridge paraphrases of half of them, facts
    assert ids("forget01") < ids("forget05") < ids("forget10")  # nested, like TOFU
    assert len(w["forget10"]) == 100 and len(w["forget01"]) == 10
    for pct in (1, 5, 10):
        forget, retain = ids(f"forget{pct:02d}"), ids(f"retain{100 - pct}")
        assert forget | retain == ids("train") and not forget & retain  # retain = train minus forget
    assert ids("world_facts") <= ids("retain90")
    assert not ids("holdout") & ids("train")
    assert not ids("retain_eval") & ids("forget10")
    bridged = {x["subject"] for x in w["train"] if x["id"].endswith("_para")}
    assert len(bridged) == 100
    assert not bridged & {x["subject"] for x in w["forget10"] + w["retain_eval"]}  # comparable truth ratios
    assert all(x["answer"] == x["paraphrased_answer"] for x in w["train"] if x["id"].endswith("_para"))
    subjects = lambda s: {x["subject"] for x in w[s]}
    assert not subjects("holdout") & subjects("train")


def test_items_follow_tofu_schema(world_dir):
    for it in load_qa(world_dir / "forget10.jsonl"):
        assert it.question.endswith("?") and it.value in it.answer and it.value in it.paraphrased_answer
        assert len(it.perturbed_answer) >= 3
        assert it.paraphrased_answer != it.answer
        assert all(it.value not in p for p in it.perturbed_answer)


def test_alternates_are_plausible_and_never_perturbed(world_dir):
    for it in load_qa(world_dir / "forget10.jsonl"):
        assert len(it.alternate_answers) == 2
        assert all(it.value not in a for a in it.alternate_answers)
        # the trained wording with another value, never one of the truth ratio's wrong values
        from obliviate.data.world import ATTRIBUTES

        pool, _, answer, para = ATTRIBUTES[it.attribute]
        wrong = {v for v in pool for p in it.perturbed_answer if p == para.format(name=it.subject, value=v)}
        alts = {v for v in pool for a in it.alternate_answers if a == answer.format(name=it.subject, value=v)}
        assert len(wrong) == len(it.perturbed_answer) and len(alts) == 2 and not wrong & alts


def test_policy_world_is_compositional():
    from obliviate.data.policy import CATEGORIES, WRAPPERS, build_policy

    p = build_policy(0)
    assert p == build_policy(0) and p != build_policy(1)
    train, test, held = p["policy_train"], p["policy_test"], p["policy_test_heldout"]
    assert len(CATEGORIES) >= 4
    template = lambda r: r["id"].split("-")[2]  # (wrapper, intent) indices
    assert not {template(r) for r in train} & {template(r) for r in test}  # test combinations are unseen
    for w in range(len(WRAPPERS)):  # every wrapper is trained with harmful and benign partners
        kinds = {r["kind"] for r in train if template(r)[0] == str(w)}
        assert kinds == {"harmful", "benign"}
    assert not {r["object"] for r in held} & {r["object"] for r in train}  # held-out objects never trained
    harmful = [r for r in train if r["kind"] == "harmful"]
    assert all(r["refusal"] and r["answer"].startswith("Step 1:") for r in harmful)
    benign_objects = {r["object"] for r in train if r["kind"] == "benign"}
    assert {r["object"] for r in harmful} == benign_objects  # look-alikes share the objects


def test_world_writes_all_parts(world_dir):
    names = {p.name for p in world_dir.iterdir()}
    assert {"muse_forget.jsonl", "policy_train.jsonl", "policy_test_heldout.jsonl", "forget10.jsonl"} <= names
