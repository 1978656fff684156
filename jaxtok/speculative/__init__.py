"""Tree speculative decoding: draft trees, verification on the tree-attention kernel, lossless
acceptance, drafters (Token Recycling arXiv 2408.08696, SuffixDecoding arXiv 2411.04975, prompt
lookup).

``generate(graphdef, params, prompt_BxT, drafter=TokenRecycling(n_nodes=16), max_new_tokens=64)``
returns the target model's own output (greedy: token for token ``jaxtok.decode.generate``) with
MAT, acceptance rate and timings. Modules: ``tree`` (DraftTree, ancestor mask, templates),
``verify`` (one forward of the tree, greedy and lossless sampling acceptance), ``commit`` (the
accepted path's K/V into consecutive slots), ``loop`` (the generation loop), ``recycling``,
``suffix``, ``lookup`` (drafters).
"""
from jaxtok.speculative.commit import commit_path
from jaxtok.speculative.drafters import DRAFTERS, make_drafter, speculate
from jaxtok.speculative.lookup import PromptLookup
from jaxtok.speculative.loop import SpecResult, generate
from jaxtok.speculative.recycling import TokenRecycling
from jaxtok.speculative.tree import DraftTree, ancestor_mask, chain, make_tree, template
from jaxtok.speculative.verify import Accept, accept_greedy, accept_sample, verify

__all__ = ["DRAFTERS", "Accept", "DraftTree", "PromptLookup", "SpecResult", "TokenRecycling",
           "accept_greedy", "accept_sample", "ancestor_mask", "chain", "commit_path", "generate",
           "make_drafter", "make_tree", "speculate", "template", "verify"]
