"""Tree speculative decoding: draft trees, verification on the tree-attention kernel through
``jaxtok.decode.extend``, lossless acceptance, drafters (Token Recycling arXiv 2408.08696,
SuffixDecoding arXiv 2411.04975, prompt lookup).

``generate(model, prompt_BxT, drafter=TokenRecycling(n_nodes=16), max_new_tokens=64)`` returns
the target model's own output as a ``jaxtok.decode.Generation`` (greedy: token for token
``jaxtok.decode.generate``) with steps, accepted and drafted tokens in ``stats``; ``mat`` and
``acceptance_rate`` read them. Modules: ``drafter`` (the ``DeviceDrafter`` / ``HostDrafter``
protocols), ``tree`` (DraftTree, ancestor mask, templates), ``verify`` (one forward of the tree,
greedy and lossless sampling acceptance), ``commit`` (the accepted path's K/V into consecutive
slots), ``loop`` (the device loop), ``host_loop`` (host drafters), ``generate`` (the entry point,
by protocol), ``recycling``, ``suffix``, ``lookup`` (drafters).
"""
from jaxtok.speculative.commit import commit_path
from jaxtok.speculative.drafter import DeviceDrafter, HostDrafter, HostTreeDrafter, check_drafter
from jaxtok.speculative.generate import (DRAFTERS, acceptance_rate, generate, make_drafter, mat,
                                         min_capacity, speculate, tokens_per_s)
from jaxtok.speculative.lookup import HostPromptLookup, PromptLookup
from jaxtok.speculative.recycling import TokenRecycling
from jaxtok.speculative.suffix import SuffixDecoding
from jaxtok.speculative.tree import DraftTree, ancestor_mask, chain, make_tree, template
from jaxtok.speculative.verify import Accept, accept_greedy, accept_sample, verify

__all__ = ["DRAFTERS", "Accept", "DeviceDrafter", "DraftTree", "HostDrafter", "HostPromptLookup",
           "HostTreeDrafter", "PromptLookup", "SuffixDecoding", "TokenRecycling", "accept_greedy",
           "accept_sample", "acceptance_rate", "ancestor_mask", "chain", "check_drafter",
           "commit_path", "generate", "make_drafter", "make_tree", "mat", "min_capacity",
           "speculate", "template", "tokens_per_s", "verify"]
