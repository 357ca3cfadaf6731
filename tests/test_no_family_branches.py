"""No branch on an architecture, family or objective name outside the places that own them.

The model answers how it starts a generation and what a task head reads; the objective
answers its batch keys; a task style answers how a task is encoded and scored. A workflow
(fine-tuning, generation, loading, the entry points) that asks "is this an encoder-decoder?"
or "is this BERT?" is asking the wrong object (issue 25). This greps for such questions
outside models/, objectives/, convert/, benchmarks/ and configs/, and fails on any line not
in ALLOWED, each of which says why it may ask.
"""
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parent.parent
OWNERS = ('research/models/', 'research/objectives/', 'research/convert/',
          'research/benchmarks/', 'configs/')
ARCHS = r'(?:encoder|decoder|encoder_decoder)'
FAMILIES = r'(?:bert|gpt|gpt1|gpt2|gpt3|t5|bart|unilm|xlnet)'
OBJECTIVES = r'(?:mlm_nsp|mlm|unilm|plm|clm|prefix_lm|span_corruption|denoising|masked_seq2seq)'
OBJECTIVE_CLASSES = (r'(?:MaskedLM|UniLM|PermutationLM|CausalLM|PrefixLM|SpanCorruption|Denoising'
                     r'|Seq2SeqLM|MaskedSeq2Seq)')
BRANCHES = [
    re.compile(r'\barch\s*(?:==|!=|\bin\b|\bnot\s+in\b)'),  # cfg.arch == 'decoder'
    re.compile(r'(?:==|!=)\s*[\w.]*\barch\b'),  # 'decoder' == cfg.arch
    re.compile(r'\[[^\[\]]*\barch\]'),  # TABLE[cfg.arch]
    re.compile(rf"'{ARCHS}'\s*:"),  # {'encoder': ..., 'decoder': ...}
    re.compile(rf"(?:==|!=|\bin\b)\s*\(?'{FAMILIES}'"),  # name == 'gpt'
    re.compile(rf"'{FAMILIES}'\s*(?:==|!=)"),
    re.compile(rf"(?:==|!=|\bin\b)\s*\(?'{OBJECTIVES}'"),  # objective.name == 'clm'
    re.compile(rf"'{OBJECTIVES}'\s*(?:==|!=)"),
    re.compile(rf'isinstance\([^)]*{OBJECTIVE_CLASSES}'),
]

# (path, a piece of the line) -> why this place may ask.
ALLOWED = {
    ('research/tasks/encoding.py', "if name == 'gpt':"):
        "InputStyle names an input *format* (BERT's [CLS] A [SEP] B [SEP] or GPT-1's start A "
        "delim B extract), data any arch can read (--config.finetune.input_style); which "
        "tokens GPT-1's format needs is a property of the format",
    ('research/tasks/encoding.py', "if name == 'gpt' else {}"):
        'the same: the format, not the model, needs a start token',
    ('research/tasks/encoding.py', "if self.name == 'bert':"):
        'the same: how the format packs segments',
    ('research/tasks/encoding.py', "return self.name == 'gpt'"):
        "the same: GPT-1's format reads unordered pairs both ways (Sec 3.3)",
    ('research/tasks/encoding.py', '"gpt" if name == "bert" else "bert"'):
        'an error message naming the other input format',
    ('research/flops.py', "if cfg.arch == 'encoder_decoder':"):
        "counts a ModelConfig's matmul FLOPs: a fact about the model's shape (two stacks), "
        'read from it as models/ would',
    ('research/plan.py', "if cfg.arch == 'encoder_decoder':"):
        "plans a ModelConfig's memory: the same fact about the model's shape as flops.py",
}


def code_lines(path: pathlib.Path):
  """(number, line) of lines that are code, not comments or docstrings."""
  in_string = None
  for number, line in enumerate(path.read_text(encoding='utf-8').splitlines(), 1):
    stripped = line.strip()
    if in_string:
      if in_string in stripped:
        in_string = None
      continue
    for quote in ('"""', "'''"):
      if stripped.startswith(quote) or (stripped.startswith(('r' + quote, 'f' + quote))):
        if stripped.count(quote) == 1:
          in_string = quote
        break
    else:
      if not stripped.startswith('#'):
        yield number, line.split('  #')[0]


def branches() -> list[str]:
  found = []
  for path in sorted([*REPO.glob('research/**/*.py'), *REPO.glob('launch/**/*.py')]):
    name = path.relative_to(REPO).as_posix()
    if name.startswith(OWNERS):
      continue
    for number, line in code_lines(path):
      if any(p.search(line) for p in BRANCHES) and not any(
          name == where and piece in line for where, piece in ALLOWED):
        found.append(f'{name}:{number}: {line.strip()}')
  return found


def test_no_architecture_family_or_objective_branch_outside_their_owners():
  assert branches() == []


def test_the_grep_finds_a_branch():
  """The patterns catch the forms the issue counted (so the test above can fail)."""
  lines = ["if cfg.arch == 'encoder_decoder':", "x = TABLE[model_cfg.arch]",
           "styles = {'encoder': 'bert', 'decoder': 'gpt'}", "if family == 't5':",
           "if objective.name in ('clm', 'prefix_lm'):", 'if isinstance(o, PrefixLM):']
  for line in lines:
    assert any(p.search(line) for p in BRANCHES), line
  assert not any(p.search('model_cfg.check_length(length)') for p in BRANCHES)


def test_every_allowed_entry_is_still_needed():
  """An allow-list entry whose line is gone must go too."""
  for where, piece in ALLOWED:
    text = (REPO / where).read_text(encoding='utf-8')
    assert piece in text, (where, piece)
