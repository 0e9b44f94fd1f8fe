"""Pydantic models of the v2 JSON bodies, used only to document the API in /openapi.json.

The hot path never touches them: requests are parsed and responses written by the codecs
in ``gateway.protocol``. A test checks that real responses validate against these models,
so the document stays accurate.
"""

from typing import Any

from pydantic import BaseModel, Field

Parameters = dict[str, bool | int | float | str]
TensorData = list[Any]


class ErrorResponse(BaseModel):
    error: str


class LiveResponse(BaseModel):
    live: bool


class ReadyResponse(BaseModel):
    ready: bool


class ModelReadyResponse(BaseModel):
    name: str
    version: str
    ready: bool
    reason: str | None = None


class ServerMetadataResponse(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 marks a variable dimension; the first is the batch when batching")


class ModelMetadataResponse(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ModelIndexEntry(BaseModel):
    name: str
    version: str
    state: str = Field(description="LOADING, READY or UNAVAILABLE")
    reason: str | None = None


class ModelIndexResponse(BaseModel):
    models: list[ModelIndexEntry]


class StatisticDuration(BaseModel):
    count: int
    ns: int


class InferStatistics(BaseModel):
    success: StatisticDuration
    fail: StatisticDuration
    queue: StatisticDuration
    compute_input: StatisticDuration
    compute_infer: StatisticDuration
    compute_output: StatisticDuration
    cache_hit: StatisticDuration
    cache_miss: StatisticDuration


class BatchStatistics(BaseModel):
    batch_size: int
    compute_input: StatisticDuration
    compute_infer: StatisticDuration
    compute_output: StatisticDuration


class ModelStatistics(BaseModel):
    name: str
    version: str
    last_inference: int = Field(description="milliseconds since the epoch")
    inference_count: int = Field(description="rows inferred (a request of batch N counts N)")
    execution_count: int = Field(description="batches executed")
    inference_stats: InferStatistics
    batch_stats: list[BatchStatistics]


class StatisticsResponse(BaseModel):
    model_stats: list[ModelStatistics]


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = Field(
        None, description="binary_data_size: the input's bytes follow the JSON header (binary extension)")
    data: TensorData | None = Field(None, description="row-major elements, flat or nested")


class RequestOutput(BaseModel):
    name: str
    parameters: Parameters | None = Field(None, description="binary_data: return this output as binary")


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: Parameters | None = Field(
        None, description="binary_data_output: the default for every output's binary_data")
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: TensorData | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class SharedMemoryRegisterRequest(BaseModel):
    key: str = Field(description="The shared-memory segment's key, as given to shm_open (e.g. '/my_segment')")
    offset: int = Field(0, ge=0, description="Where the region starts in the segment, in bytes")
    byte_size: int = Field(ge=1, description="The region's length in bytes")


class SharedMemoryRegionStatus(BaseModel):
    name: str
    key: str
    offset: int
    byte_size: int


class RepositoryIndexRequest(BaseModel):
    ready: bool = Field(False, description="true: only the models ready for inference")


class RepositoryIndexEntry(BaseModel):
    name: str
    version: str | None = Field(None, description="absent for a model that was never loaded")
    state: str | None = Field(None, description="LOADING, READY or UNAVAILABLE; absent for a model never loaded")
    reason: str | None = None


class RepositoryLoadRequest(BaseModel):
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="'config': a JSON string holding the model configuration (Triton's ModelConfig) to load "
                    "with instead of the folder's config file")


class RepositoryUnloadRequest(BaseModel):
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="'unload_dependents': accepted (no model here has dependents)")
