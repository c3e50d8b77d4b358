from ipgraph.nodes.models.tokenizer import clip_tokenizer, sd15_tokenizer, sdxl_tokenizers


def test_ids_match_real_clip():
    assert sd15_tokenizer()("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_padding_tokens_match_sd15_and_sdxl():
    ids = sd15_tokenizer()("a cat", padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77 and ids[-1] == 49407  # SD1.5 pads with <|endoftext|>
    tok1, tok2 = sdxl_tokenizers()
    ids2 = tok2("a cat", padding="max_length", max_length=77).input_ids
    assert tok2.pad_token == "!" and ids2[:5] == [49406, 320, 2368, 49407, 0]  # OpenCLIP bigG pads with "!"
    assert tok1 is clip_tokenizer()  # cached


def test_truncates_to_77():
    ids = sd15_tokenizer()("cat " * 200, truncation=True, max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == 49406 and ids[-1] == 49407
