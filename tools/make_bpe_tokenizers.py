#!/usr/bin/env python3
"""Small BPE test tokenizers (tokenizer.json) in the layouts of Phi-4, Phi-4-mini, GPT-2, Qwen2, Llama 3 and
OLMoE (byte-level) and of Gemma 3, Mistral / Mixtral (SentencePiece-style: byte fallback, "▁" for spaces), and
the ids Hugging Face `tokenizers` gives for a corpus of test strings.

    python3 tools/make_bpe_tokenizers.py [--out tests/data/bpe] [--only LAYOUT ...]   # needs: pip install tokenizers

Writes, deterministically (fixed seeds, no network):
  <out>/<layout>/tokenizer.json, tokenizer_config.json   one directory per layout
  <out>/corpus.json      {"texts": [...]}: >= 2,000 test strings
  <out>/expected.json    {layout: {"ids": [[...]...], "decoded": [text or null (= the text)],
                                   "bos_ids": ids of "Hello" with the post-processor's specials}}

Layouts (pre-tokenizer, decoder, added tokens with their flags, tokenizer_config.json as the
real checkpoints have them, as far as public copies show; the vocabulary is trained here on a
mixed-script corpus, a few thousand merges, with the added tokens right after it):
  phi-4        Split(GPT-4 / cl100k regex, Removed, invert) + ByteLevel without prefix space or
               regex; 96 added tokens with lstrip + rstrip; no add_bos_token; merges "a b"
  phi-4-mini   Split(GPT-4o / o200k regex, Removed, invert) + ByteLevel likewise; 12 added tokens
               (rstrip on most, 5 not special); add_bos_token false; merges as pairs ["a", "b"];
               ignore_merges (a word in the vocabulary is taken whole) to exercise that path
  gpt2         ByteLevel with GPT-2's own regex, no prefix space; merges "a b"
  qwen2        NFC normalizer, Split(Qwen2's regex, Isolated) + ByteLevel without regex; 10 special
               added tokens; bos_token null (no BOS); merges as pairs
  llama3       Split(cl100k regex, Isolated) + ByteLevel; ignore_merges; BOS <|begin_of_text|> from a
               TemplateProcessing (no add_bos_token); 8 special added tokens
  gpt2-prefix  the same with add_prefix_space (the prefix goes on every piece of text) and a
               TemplateProcessing post-processor that puts BOS first; merges as pairs
  olmoe        GPT-NeoX's: NFC normalizer + ByteLevel with GPT-2's regex; <|endoftext|>, <|padding|>
               and the PII tokens (|||EMAIL_ADDRESS||| ...) added; no BOS
SentencePiece-style (transformers' GemmaConverter / LlamaConverter output; characters as symbols,
a vocabulary with the 256 <0xNN> byte pieces, byte_fallback, unk <unk>, fuse_unk; characters past the
trained alphabet of 300 fall back to bytes):
  gemma3       Replace(" ", "▁") normalizer, Split(" ", MergedWithPrevious), decoder Replace +
               ByteFallback + Fuse, BOS <bos> from a TemplateProcessing, no prefix
  mistral      Mixtral-8x7B / Mistral v0.1 (legacy): Prepend("▁") + Replace(" ", "▁") normalizer, no
               pre-tokenizer, decoder Replace + ByteFallback + Fuse + Strip(" ", 1, 0), BOS <s>
  mistral-v3   the non-legacy conversion: no normalizer, Metaspace(prepend_scheme first, split false)
  metaspace    not a real checkpoint: Metaspace(always, split true) and the Metaspace decoder, no byte
               fallback (unknown characters become one fused <unk>)
The new layouts' added tokens are not in the corpus (it stays the one the first six were made with):
each of them has its own extra texts around its added tokens (expected.json "extra_texts").

The C++ test tests/cpu/test_bpe_tokenizer.cpp loads each directory and asserts that the engine
gives the same ids and decoded strings for every text of the corpus.
"""
import argparse
import json
import os
import random

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import AddedToken

# The split regexes of the real tokenizer.json files (tiktoken's cl100k_base and o200k_base).
CL100K = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
          r"\s*[\r\n]+|\s+(?!\S)|\s+")
O200K = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
         r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
         r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Added tokens: (content, special, lstrip, rstrip), in id order right after the trained vocabulary,
# and (as in the real files) also entries of model.vocab.
# Phi-4: 96 tokens (100256..100351 there), all special with lstrip and rstrip.
PHI4_ADDED = ([("<|dummy_0|>",), ("<|endoftext|>",), ("<|fim_prefix|>",), ("<|fim_middle|>",), ("<|fim_suffix|>",)] +
              [(f"<|dummy_{i}|>",) for i in range(1, 4)] + [("<|im_start|>",), ("<|im_end|>",), ("<|im_sep|>",)] +
              [(f"<|dummy_{i}|>",) for i in range(4, 13)] + [("<|endofprompt|>",)] +
              [(f"<|dummy_{i}|>",) for i in range(13, 88)])
PHI4_ADDED = [(c, True, True, True) for (c,) in PHI4_ADDED]
# Phi-4-mini: 12 tokens (199999, 200018..200028 there); the tool tokens are not special.
PHI4_MINI_ADDED = [("<|endoftext|>", True, False, False), ("<|endofprompt|>", True, False, False),
                   ("<|assistant|>", True, False, True), ("<|end|>", True, False, True),
                   ("<|user|>", True, False, True), ("<|system|>", True, False, True),
                   ("<|tool|>", False, False, True), ("<|/tool|>", False, False, True),
                   ("<|tool_call|>", False, False, True), ("<|/tool_call|>", False, False, True),
                   ("<|tool_response|>", False, False, True), ("<|tag|>", True, False, True)]
GPT2_ADDED = [("<|endoftext|>", True, False, False)]
# Qwen2 / Qwen2.5: <|endoftext|> (151643 there), <|im_start|>, <|im_end|> and the vision / FIM
# tokens, all special, no stripping.
QWEN2_ADDED = [(c, True, False, False) for c in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                                                  "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|fim_prefix|>",
                                                  "<|fim_middle|>", "<|fim_suffix|>")]
# Llama 3: <|begin_of_text|> (128000 there), <|end_of_text|>, reserved tokens, the chat headers.
LLAMA3_ADDED = [(c, True, False, False) for c in ("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                                                   "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>",
                                                   "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")]
# Qwen2's split regex (its tokenizer.json: cl100k's with single digits), behavior Isolated.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")

# Split "Removed" with invert: the regex's matches are the words (Phi-4-mini's tokenizer.json as
# quoted in meta-pytorch/tokenizers PR #38; Phi-4's is taken to be the same conversion).
LAYOUTS = {
    "phi-4": dict(split=CL100K, prefix=False, use_regex=False, vocab=4096, added=PHI4_ADDED, merges="strings",
                  ignore_merges=False,
                  config=dict(add_prefix_space=False, bos_token="<|endoftext|>", clean_up_tokenization_spaces=False,
                              eos_token="<|im_end|>", model_max_length=16384, pad_token="<|dummy_85|>",
                              tokenizer_class="GPT2Tokenizer")),
    "phi-4-mini": dict(split=O200K, prefix=False, use_regex=False, vocab=4096, added=PHI4_MINI_ADDED,
                       merges="pairs", ignore_merges=True,
                       config=dict(add_bos_token=False, add_eos_token=False, add_prefix_space=False,
                                   bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", clean_up_tokenization_spaces=False,
                                   model_max_length=131072, tokenizer_class="GPT2Tokenizer")),
    "gpt2": dict(split=None, prefix=False, use_regex=True, vocab=2048, added=GPT2_ADDED, merges="strings",
                 ignore_merges=False,
                 config=dict(add_prefix_space=False, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                             unk_token="<|endoftext|>", model_max_length=1024, tokenizer_class="GPT2Tokenizer")),
    # Qwen2 / Qwen2.5: an NFC normalizer, Split(Isolated) with Qwen's regex, no BOS at all.
    "qwen2": dict(split=QWEN2_SPLIT, behavior="isolated", normalizer="NFC", prefix=False, use_regex=False, vocab=4096,
                  added=QWEN2_ADDED, merges="pairs", ignore_merges=False,
                  config=dict(add_prefix_space=False, bos_token=None, eos_token="<|endoftext|>",
                              pad_token="<|endoftext|>", unk_token=None, errors="replace", model_max_length=131072,
                              split_special_tokens=False, clean_up_tokenization_spaces=False,
                              tokenizer_class="Qwen2Tokenizer")),
    # Llama 3: Split(Isolated) with cl100k's regex, ignore_merges, BOS <|begin_of_text|> from a
    # TemplateProcessing (its tokenizer_config.json has no add_bos_token).
    "llama3": dict(split=CL100K, behavior="isolated", prefix=False, use_regex=False, vocab=4096, added=LLAMA3_ADDED,
                   merges="pairs", ignore_merges=True, template_bos=True,
                   config=dict(bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>", model_max_length=131072,
                               clean_up_tokenization_spaces=True, tokenizer_class="PreTrainedTokenizerFast")),
    # Not a real checkpoint: ByteLevel's add_prefix_space, and BOS from a TemplateProcessing.
    "gpt2-prefix": dict(split=None, prefix=True, use_regex=True, vocab=2048, added=GPT2_ADDED, merges="pairs",
                        ignore_merges=False, template_bos=True,
                        config=dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                    unk_token="<|endoftext|>", model_max_length=1024,
                                    tokenizer_class="GPT2TokenizerFast")),
    # GPT-NeoX / OLMoE: NFC, ByteLevel with GPT-2's regex (no prefix space), no BOS.
    "olmoe": dict(split=None, normalizer="NFC", prefix=False, use_regex=True, vocab=4096, merges="pairs",
                  ignore_merges=False, new=True,
                  added=[("<|endoftext|>", True, False, False), ("<|padding|>", True, False, False),
                         ("|||EMAIL_ADDRESS|||", False, False, False), ("|||PHONE_NUMBER|||", False, False, False),
                         ("|||IP_ADDRESS|||", False, False, False)],
                  config=dict(add_bos_token=False, add_eos_token=False, bos_token=None, eos_token="<|endoftext|>",
                              pad_token="<|padding|>", unk_token=None, model_max_length=4096,
                              clean_up_tokenization_spaces=True, tokenizer_class="GPTNeoXTokenizer")),
    "gemma3": dict(sp="gemma", vocab=3000, merges="pairs", new=True, template_bos=True,
                   added=[("<pad>", True, False, False), ("<eos>", True, False, False), ("<bos>", True, False, False),
                          ("<unk>", True, False, False), ("<start_of_turn>", True, False, False),
                          ("<end_of_turn>", True, False, False), ("<start_of_image>", True, False, False)],
                   config=dict(add_bos_token=True, add_eos_token=False, bos_token="<bos>", eos_token="<eos>",
                               pad_token="<pad>", unk_token="<unk>", spaces_between_special_tokens=False,
                               model_max_length=1000000000000000019884624838656, tokenizer_class="GemmaTokenizer")),
    "mistral": dict(sp="legacy", vocab=3000, merges="strings", new=True, template_bos=True,
                    added=[("<unk>", True, False, False), ("<s>", True, False, False), ("</s>", True, False, False)],
                    config=dict(add_bos_token=True, add_eos_token=False, bos_token="<s>", eos_token="</s>",
                                unk_token="<unk>", legacy=True, model_max_length=1000000000000000019884624838656,
                                tokenizer_class="LlamaTokenizer")),
    "mistral-v3": dict(sp="metaspace-first", vocab=3000, merges="pairs", new=True, template_bos=True,
                       added=[("<unk>", True, False, False), ("<s>", True, False, False), ("</s>", True, False, False),
                              ("[INST]", True, False, False), ("[/INST]", True, False, False)],
                       config=dict(add_bos_token=True, add_eos_token=False, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", legacy=False, tokenizer_class="LlamaTokenizer")),
    "metaspace": dict(sp="metaspace-split", vocab=3000, merges="pairs", new=True, no_byte_fallback=True,
                      added=[("<unk>", True, False, False), ("<s>", True, False, False)],
                      config=dict(add_bos_token=False, bos_token="<s>", unk_token="<unk>",
                                  tokenizer_class="PreTrainedTokenizerFast")),
}

# ---- word pools for training text and test strings --------------------------------------
LATIN = ("the goal is to make one cup of coffee answer short long term future president become learn a language "
         "write novel build house run marathon plant tree tomorrow year decade minute hour week month café naïve "
         "résumé façade Ångström Straße déjà vu jalapeño coöperate São Paulo Zürich Kraków señor crème brûlée "
         "piñata Ærøskøbing Łódź İstanbul ğüşıöç").split()
CYRILLIC = "Привет мир цель сделать чашку кофе краткосрочная долгосрочная будущее президент Ёлка ЖУРНАЛ".split()
GREEK = "Καλημέρα κόσμε στόχος μέλλον ΑΘΗΝΑ ψυχή".split()
ARABIC = "مرحبا بالعالم الهدف قصير طويل المستقبل رئيس".split()
HEBREW = "שלום עולם מטרה".split()
CJK = "你好世界 目标 短期 长期 未来 总统 日本語 東京 ひらがな カタカナ 한국어 서울 안녕하세요".split()
INDIC = "नमस्ते दुनिया लक्ष्य ভাষা தமிழ் ਪੰਜਾਬੀ".split()
THAI = "สวัสดี โลก เป้าหมาย".split()
EMOJI = ["👍", "😀", "🎉", "❤️", "👩‍👩‍👧‍👦", "👨‍💻", "🏳️‍🌈", "🧑🏽‍🚀", "👋🏽", "🇯🇵", "🇺🇸", "☕", "✨", "🤖", "👁️‍🗨️",
         "🫶🏿", "1️⃣", "#️⃣"]
SYMBOLS = list(".,;:!?-—–()[]{}<>/\\|@#$%^&*_+=~`\"'“”‘’«»…·•§¶©®™°±×÷€£¥₹")
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'Ve", "'M", "'LL", "'D", "’s", "’T"]
WORDS_EN = ["I", "you", "it", "they", "we", "don", "can", "won", "she", "He", "IT", "THEY", "We", "Don", "CAN", "John",
            "Mary", "Phi", "GPT", "BPE", "camelCase", "snake_case", "HTTPServer", "iPhone", "McDonald", "O'Brien"]
SPACES = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n", "\n ", "\t \n", "\u00a0", "\u3000", "\u2009",
          "\u2028", "\u0085", "\u200b", "\u180e", "\u202f", "\u2003", " \u00a0 ", "\x0b", "\x0c"]
ODD = ["ǅ", "ǈ", "ʰ", "ˆ", "ー", "々", "é", "é", "ñ", "Å", "ﬁ", "Ⅻ", "½", "²", "٣", "५", "〇", "𝔘𝔫𝔦", "𝟘𝟙", "ꙮ",
       "\u0301", "\u20dd", "a\u0308", "ᾼ", "ﷺ", "Ꭰ", "ſ", "K", "İ", "ß", "ẞ"]


def number(rng):
    k = rng.choice([1, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 20, 33])
    digits = "".join(rng.choice("0123456789") for _ in range(k))
    form = rng.random()
    if form < 0.15:
        return digits + "." + "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 6)))
    if form < 0.25:
        return "-" + digits
    if form < 0.35:
        return f"{int(digits):,}"
    if form < 0.4:
        return "".join(rng.choice("٠١٢٣٤٥٦٧٨٩") for _ in range(k))  # Arabic-Indic digits
    return digits


def word(rng):
    pools = [LATIN] * 5 + [WORDS_EN] * 3 + [CYRILLIC, GREEK, ARABIC, HEBREW, CJK, INDIC, THAI, EMOJI, ODD]
    r = rng.random()
    if r < 0.1:
        return number(rng)
    if r < 0.14:
        return "".join(rng.choice(SYMBOLS) for _ in range(rng.randint(1, 3)))
    w = rng.choice(rng.choice(pools))
    if rng.random() < 0.15:
        w = w.upper() if rng.random() < 0.5 else w.capitalize()
    if rng.random() < 0.08:
        w += rng.choice(CONTRACTIONS)
    return w


def sentence(rng, n_words, specials=()):
    out = []
    for i in range(n_words):
        if i:
            r = rng.random()
            out.append(" " if r < 0.75 else rng.choice(SPACES) if r < 0.9 else "")
        if specials and rng.random() < 0.04:
            out.append(rng.choice(specials))
        else:
            out.append(word(rng))
    if rng.random() < 0.3:
        out.append(rng.choice(".?!:\n"))
    return "".join(out)


def random_code_points(rng, n):
    ranges = [(0x20, 0x7e), (0xa0, 0x24f), (0x370, 0x3ff), (0x400, 0x4ff), (0x590, 0x6ff), (0x900, 0x97f),
              (0x3040, 0x30ff), (0x4e00, 0x4fff), (0xac00, 0xac7f), (0x1f300, 0x1f64f), (0x2000, 0x206f),
              (0x0300, 0x036f), (0x1d400, 0x1d4ff)]
    s = []
    for _ in range(n):
        lo, hi = rng.choice(ranges)
        cp = rng.randint(lo, hi)
        if 0xd800 <= cp <= 0xdfff:
            continue
        s.append(chr(cp))
    return "".join(s)


def training_text(root, rng):
    lines = []
    with open(os.path.join(root, "data/raw/temporal_scope_caa.json")) as f:
        for item in json.load(f):
            lines.append(item["question"] + item["answer_matching_behavior"])
    for _ in range(6000):
        lines.append(sentence(rng, rng.randint(3, 30)))
    for _ in range(300):
        lines.append(random_code_points(rng, rng.randint(5, 40)))
    return lines


def test_corpus(root, specials, rng):
    texts = []
    with open(os.path.join(root, "data/temporal_scope_for_attribution_patching.json")) as f:
        for p in json.load(f):
            for side in ("clean", "corrupted"):
                texts += [p[side]["question"], p[side]["question"] + " " + p[side]["answer"],
                          " " + p[side]["answer"], p[side]["answer"]]
    with open(os.path.join(root, "data/raw/temporal_scope_caa.json")) as f:
        items = json.load(f)
    for item in items[:200]:
        texts.append(item["question"])
        texts.append("The goal is to " + item["goal"] + ". Is this a short-term or long-term goal? The answer is:")
    # Fixed edge cases.
    texts += ["", " ", "  ", "\t", "\n", "\n\n\n", "\r\n", " \n ", "a", " a", "a ", "  a  ", "Hello", " Hello",
              "Hello world", "Hello  world", "hello\tworld", "line1\nline2\r\nline3", "   leading", "trailing   ",
              "I'm", "I'M", "don't", "DON'T", "we'll", "WE'LL", "they've", "THEY'VE", "she'd", "it's", "IT'S",
              "you're", "YOU'RE", "O'Neil's", "'s", "'", "''", "rock'n'roll", "can’t", "CAN’T",
              "0", "7", "42", "123", "1234", "12345", "123456789", "3.14159", "1,000,000", "2024-12-02",
              "v1.2.3", "0x1F", "1e-10", "٣٤٥", "१२३", "½", "²³", "Ⅻ",
              "👩‍👩‍👧‍👦", "🏳️‍🌈", "👨‍💻 coding", "🇯🇵🇺🇸", "👋🏽👋🏿", "1️⃣2️⃣", "a👍b", "😀😀😀",
              "日本語のテキスト", "中文文本，标点。", "한국어 텍스트", "Привет, мир!", "مرحبا بالعالم", "שלום",
              "नमस्ते", "สวัสดีครับ", "Ελληνικά", "camelCaseWord", "HTTPServerError", "snake_case_word",
              "ǅemal ǈubljana", "ʰello", "ﬁne", "ſtraße", "İstanbul", "ẞ", "a\u0301", "e\u0301\u0301",
              "x" * 300, "ab" * 200, " " * 50, "\n" * 20, "9" * 64, "👍" * 30, "a\u00a0b", "a\u3000b", "a\u2028b",
              "a\u0085b", "a\u180eb", "a\u200bb", "tab\tand  spaces   mixed\t \t", "end.\n\nNew paragraph",
              "path/to/file.txt", "https://example.com/a?b=c&d=e", "email@example.com", "C++ & C#", "x = y + 1;",
              "def f(x):\n    return x * 2\n", "{\"key\": [1, 2, 3]}", "<html><body>hi</body></html>",
              "--flag=value", "...", "?!?!", "¿Qué?", "¡Hola!", "«quote»", "“curly” ‘quotes’", "—dash—", "a/b/c",
              "1/2", "foo//bar", "\r", "\r\r\n", "a\rb",
              # what NFC changes: decomposed accents (composed by NFC), compatibility-only forms
              # (kept by NFC), singletons, Hangul jamo, several marks in canonical order
              "Ame\u0301lie", "Am\u00e9lie", "cafe\u0301 creme\u0300", "\u212b", "\u2126hm", "A\u030a",
              "\u1100\u1161\u11a8", "\u1112\u1161\u11ab\u1100\u116e\u11a8", "o\u0308\u0304", "q\u0307\u0323",
              "\u1e9b\u0323", "\u0041\u0301\u0302", "\u00c5\u0301", "\ufb01 \u2460 \u00bd", "e\u0301 " * 5,
              "n\u0303a\u0303o", "\u0915\u093c", "\u05d0\u05b7", "Zu\u0308rich Zu\u0308rich"]
    for sp in specials:
        texts += [sp, "a" + sp, sp + "b", "Hello " + sp + " world", "Hello" + sp + "world", sp + sp,
                  " " + sp + " ", "x\n" + sp + "\ny", sp[:-1], sp[1:], "<|" + sp + "|>"]
    # Random compositions up to 2,000+ strings.
    while len(texts) < 2400:
        r = rng.random()
        if r < 0.6:
            texts.append(sentence(rng, rng.randint(1, 25), specials))
        elif r < 0.7:
            texts.append(random_code_points(rng, rng.randint(1, 30)))
        elif r < 0.8:
            texts.append("".join(rng.choice(SPACES) for _ in range(rng.randint(1, 6))).join(
                word(rng) for _ in range(rng.randint(1, 5))))
        elif r < 0.9:
            texts.append(" ".join(number(rng) for _ in range(rng.randint(1, 6))))
        else:
            texts.append("".join(rng.choice(WORDS_EN) + rng.choice(CONTRACTIONS) + rng.choice(SPACES)
                                 for _ in range(rng.randint(1, 4))))
    return texts


def build_sp(spec, lines):
    """A SentencePiece-style BPE: trained on characters with "▁" for spaces, then the 256 byte pieces
    and the added tokens appended to the vocabulary, as transformers' converters lay it out."""
    fallback = not spec.get("no_byte_fallback")
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=fallback, fuse_unk=True))
    kind = spec["sp"]
    if kind == "gemma":
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
        dec = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    elif kind == "legacy":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        dec = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    elif kind == "metaspace-first":
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        dec = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    else:  # metaspace-split
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
        dec = None
    trainer = trainers.BpeTrainer(vocab_size=spec["vocab"], show_progress=False, min_frequency=2, limit_alphabet=300,
                                  special_tokens=["<unk>"])
    tok.train_from_iterator(lines, trainer=trainer)
    j = json.loads(tok.to_str())
    j["decoder"] = (json.loads(decoders.Sequence(dec).__getstate__()) if dec else
                    {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True})
    vocab = j["model"]["vocab"]
    if fallback:
        for b in range(256):
            vocab[f"<0x{b:02X}>"] = len(vocab)
    added = []
    for content, special, lstrip, rstrip in spec["added"]:
        if content not in vocab:
            vocab[content] = len(vocab)
        added.append(dict(id=vocab[content], content=content, single_word=False, lstrip=lstrip, rstrip=rstrip,
                          normalized=False, special=special))
    j["added_tokens"] = added
    merges = [m.split(" ") if isinstance(m, str) else m for m in j["model"]["merges"]]
    j["model"]["merges"] = merges if spec["merges"] == "pairs" else [" ".join(m) for m in merges]
    if spec.get("template_bos"):
        bos = spec["config"]["bos_token"]
        j["post_processor"] = json.loads(processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]).__getstate__())
    else:
        j["post_processor"] = None
    return j


def extra_texts(spec, rng):
    """Texts around a new layout's added tokens (the shared corpus holds only the first six layouts')."""
    texts = []
    for content, *_ in spec["added"]:
        texts += [content, "a" + content, content + "b", "Hello " + content + " world", content + " Hello",
                  " " + content, content + content, "x\n" + content + "\ny", content[:-1]]
    for _ in range(40):
        texts.append(sentence(rng, rng.randint(1, 12), [a[0] for a in spec["added"]]))
    return texts


def build(spec, lines):
    if spec.get("sp"):
        return build_sp(spec, lines)
    tok = Tokenizer(models.BPE())
    steps = []
    if spec["split"]:
        if spec.get("behavior") == "isolated":
            steps.append(pre_tokenizers.Split(Regex(spec["split"]), behavior="isolated", invert=False))
        else:
            steps.append(pre_tokenizers.Split(Regex(spec["split"]), behavior="removed", invert=True))
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=spec["prefix"], use_regex=spec["use_regex"]))
    tok.pre_tokenizer = steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=spec["vocab"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, min_frequency=2)
    tok.train_from_iterator(lines, trainer=trainer)
    j = json.loads(tok.to_str())
    if spec.get("normalizer") == "NFC":
        j["normalizer"] = {"type": "NFC"}
    vocab = j["model"]["vocab"]
    added = []
    for content, special, lstrip, rstrip in spec["added"]:
        vocab[content] = len(vocab)
        added.append(dict(id=vocab[content], content=content, single_word=False, lstrip=lstrip, rstrip=rstrip,
                          normalized=False, special=special))
    j["added_tokens"] = added
    j["model"]["ignore_merges"] = spec["ignore_merges"]
    merges = [m.split(" ") if isinstance(m, str) else m for m in j["model"]["merges"]]
    j["model"]["merges"] = merges if spec["merges"] == "pairs" else [" ".join(m) for m in merges]
    if spec.get("template_bos"):
        bos = spec["config"]["bos_token"]
        j["post_processor"] = json.loads(processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]).__getstate__())
    else:
        j["post_processor"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    return j


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="tests/data/bpe")
    ap.add_argument("--only", nargs="+", help="(re)make only these layouts, keeping expected.json's others")
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = os.path.join(root, args.out) if not os.path.isabs(args.out) else args.out
    lines = training_text(root, random.Random(1234))
    all_specials = sorted({a[0] for spec in LAYOUTS.values() if not spec.get("new") for a in spec["added"]
                           if "dummy" not in a[0]})
    texts = test_corpus(root, all_specials, random.Random(5678))
    expected = {}
    if args.only:
        unknown = [x for x in args.only if x not in LAYOUTS]
        if unknown:
            raise SystemExit(f"unknown layouts {unknown} (known: {', '.join(LAYOUTS)})")
        with open(os.path.join(out, "expected.json"), encoding="utf-8") as f:
            expected = json.load(f)
    for layout, spec in LAYOUTS.items():
        if args.only and layout not in args.only:
            continue
        j = build(spec, lines)
        d = os.path.join(out, layout)
        os.makedirs(d, exist_ok=True)
        text = json.dumps(j, ensure_ascii=False, separators=(",", ":"))
        with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
            f.write(text + "\n")
        with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(spec["config"], f, indent=2)
            f.write("\n")
        tok = Tokenizer.from_str(text)  # what the engine will read, reloaded
        extra = extra_texts(spec, random.Random(91)) if spec.get("new") else []
        ids = [tok.encode(t, add_special_tokens=False).ids for t in texts + extra]
        decoded = [tok.decode(i, skip_special_tokens=False) for i in ids]
        expected[layout] = {"vocab_size": tok.get_vocab_size(with_added_tokens=True),
                            "merges": len(j["model"]["merges"]), "ids": ids,
                            # null where the decoded text is the text itself
                            "decoded": [d if d != t else None for d, t in zip(decoded, texts + extra)],
                            "bos_ids": tok.encode("Hello", add_special_tokens=True).ids}
        if extra:
            expected[layout]["extra_texts"] = extra
        n_tok = sum(len(i) for i in ids)
        print(f"{layout}: vocab {expected[layout]['vocab_size']}, {expected[layout]['merges']} merges, "
              f"{n_tok} tokens over {len(texts)} texts")
    if not args.only:
        with open(os.path.join(out, "corpus.json"), "w", encoding="utf-8") as f:
            json.dump({"texts": texts}, f, ensure_ascii=False, indent=0)
            f.write("\n")
    with open(os.path.join(out, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
