"""Deep and memory-efficient GNNs: grouped reversible stacks and their blocks."""

from gnnjax.deep.blocks import GENBlock
from gnnjax.deep.blocks import LinearEdges
from gnnjax.deep.reversible import coupling_forward
from gnnjax.deep.reversible import coupling_inverse
from gnnjax.deep.reversible import dropout_mask
from gnnjax.deep.reversible import invert_stack
from gnnjax.deep.reversible import reversible_stack
from gnnjax.deep.deq import DEQConfig
from gnnjax.deep.deq import deq_fixed_point
from gnnjax.deep.solvers import SolverStats
from gnnjax.deep.solvers import solve
