"""The synthetic tasks' word-level tokenizer: ids, specials, concatenation, save/load, chat."""

import numpy as np
import pytest
import transformers

from irl_jax.tasks import TASKS, VOCAB_SIZE, build_tokenizer, save_tokenizer, vocab


def test_vocabulary_is_small_fixed_and_has_the_special_ids():
    tokenizer = build_tokenizer()
    assert len(tokenizer) == VOCAB_SIZE == 93 <= 512
    assert tokenizer.get_vocab() == build_tokenizer().get_vocab() == vocab.VOCAB
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.unk_token_id == 3
    assert [tokenizer.convert_ids_to_tokens(i) for i in range(4)] == list(vocab.SPECIAL_TOKENS)


def test_digits_and_punctuation_are_single_tokens_and_specials_are_not_added():
    tokenizer = build_tokenizer()
    ids = tokenizer("37+45=").input_ids
    assert ids == tokenizer("3 7 + 4 5 =").input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["3", "7", "+", "4", "5", "="]
    # No post-processor: add_special_tokens adds neither bos nor eos.
    assert tokenizer("the soup", add_special_tokens=True).input_ids == [
        vocab.VOCAB["the"],
        vocab.VOCAB["soup"],
    ]
    assert tokenizer("the zebra <eos>").input_ids == [vocab.VOCAB["the"], vocab.UNK_ID, 2]


def _task_strings(n: int = 60) -> list[tuple[str, str]]:
    pairs = []
    for task in TASKS.values():
        demos = task.demonstrations(n, 0)
        pairs += list(zip(demos["prompt"], demos["completion"]))
        pairs += list(zip(task.prompts(n, 1), task.base_corpus(n, 1)["text"]))
    return pairs


def test_separate_tokenization_concatenates_and_decoding_round_trips():
    tokenizer = build_tokenizer()
    for prompt, response in _task_strings():
        joint = tokenizer(f"{prompt} {response}").input_ids
        assert tokenizer(prompt).input_ids + tokenizer(response).input_ids == joint
        assert tokenizer.decode(tokenizer(response).input_ids) == response
        assert vocab.UNK_ID not in joint
    ids = tokenizer("the soup <eos>").input_ids + [0, 0]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "the soup"


def test_save_and_auto_tokenizer_round_trip(tmp_path):
    path = save_tokenizer(tmp_path / "tok", padding_side="left")
    loaded = transformers.AutoTokenizer.from_pretrained(path)
    original = build_tokenizer(padding_side="left")
    assert loaded.padding_side == "left"
    assert len(loaded) == len(original)
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 1, 2)
    texts = [f"{p} {r}" for p, r in _task_strings(20)] + ["37+45=", "zebra ; <eos>"]
    assert loaded(texts).input_ids == original(texts).input_ids
    batch = loaded(["review the food", "3 7 + 4 5 ="], padding=True, return_tensors="np")
    np.testing.assert_array_equal(batch["attention_mask"], [[0, 0, 0, 1, 1, 1], [1] * 6])
    assert batch["input_ids"][0, :3].tolist() == [0, 0, 0]

    messages = [{"role": "user", "content": "review the food"}]
    prompt = loaded.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == "<bos>user : review the food assistant :"
    assert prompt == original.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    full = messages + [{"role": "assistant", "content": "the soup was tasty ."}]
    rendered = loaded.apply_chat_template(full, tokenize=False)
    assert rendered.startswith(prompt)
    ids = loaded(rendered).input_ids
    assert ids[0] == 1 and ids[-1] == 2 and vocab.UNK_ID not in ids
    assert loaded.decode(ids, skip_special_tokens=True) == (
        "user : review the food assistant : the soup was tasty ."
    )


def test_padding_side_is_checked():
    assert build_tokenizer("left").padding_side == "left"
    with pytest.raises(ValueError, match="padding_side"):
        build_tokenizer("middle")
