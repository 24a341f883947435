// Everything of Coxswain's public API in one include.
#pragma once

#include <cox/bucket.hpp>
#include <cox/collectives.hpp>
#include <cox/controller.hpp>
#include <cox/errors.hpp>
#include <cox/optim.hpp>
#include <cox/shape.hpp>
#include <cox/tensor.hpp>
