{#
    on-run-start: the sources as the raw data in the open (lake/ in the
    bucket, loaders/lake.py) shows them, for an engine that reads the lake.
    DuckDB reads the loader's own tables instead: nothing to do there.

    On Spark, under ELT_LAKE_ROOT (the local mount, or s3a://<bucket>/lake):
      elt.ledger            the lake's ledger, elt/ledger/ledger.parquet
      raw.<dataset>__files  every load file of a declared dataset, by load_date
      raw.<dataset>         the rows of the loads the ledger lists as loaded:
                            what the models read (source('mta', 'turnstile'))
    A file the ledger does not list (a write a crash cut short, a superseded
    load not deleted yet) is not data. The tables are external: dropping
    them leaves the files; they are made again each run, so new columns and
    new load_date folders are seen.
#}
{% macro lake_sources() %}
    {{- return(adapter.dispatch('lake_sources')()) -}}
{% endmacro %}

{% macro default__lake_sources() %}
    {{- return('') -}}
{% endmacro %}

{% macro spark__lake_sources() %}
    {%- if not execute -%}
        {{- return('') -}}
    {%- endif -%}
    {%- set root = env_var('ELT_LAKE_ROOT') -%}
    {%- do run_query("create schema if not exists elt") -%}
    {%- do run_query("create schema if not exists raw") -%}
    {%- do run_query("drop table if exists elt.ledger") -%}
    {%- do run_query(
        "create table elt.ledger (load_id string, dataset string, key string, etag string, "
        ~ "sha256 string, size_bytes bigint, status string, rows_in bigint, rows_loaded bigint, "
        ~ "rows_rejected bigint, loaded_at timestamp, superseded_by string, lake_key string) "
        ~ "using parquet location '" ~ root ~ "/elt/ledger'"
    ) -%}
    {%- for source in graph.sources.values()
            if source.schema == 'raw' and (source.meta or {}).get('elt') is not none -%}
        {%- set columns = [] -%}
        {%- for name in source.columns -%}
            {%- if name not in ['_source_row_number', '_load_id', '_loaded_at']
                    and not name.startswith('_source_') -%}
                {%- do columns.append('`' ~ name ~ '` string') -%}
            {%- endif -%}
        {%- endfor -%}
        {%- set files = 'raw.`' ~ source.name ~ '__files`' -%}
        {%- do run_query("drop table if exists " ~ files) -%}
        {%- do run_query(
            "create table " ~ files ~ " (" ~ columns | join(', ')
            ~ ", _source_row_number bigint, _load_id string, _loaded_at timestamp, "
            ~ "load_date string) using parquet partitioned by (load_date) location '"
            ~ root ~ "/raw/" ~ source.name ~ "'"
        ) -%}
        {%- do run_query("msck repair table " ~ files) -%}
        {%- do run_query(
            "create or replace view raw.`" ~ source.name ~ "` as select files.* except (load_date) "
            ~ "from " ~ files ~ " as files left semi join elt.ledger as ledger "
            ~ "on files._load_id = ledger.load_id and ledger.status = 'loaded'"
        ) -%}
    {%- endfor -%}
    {{- return('') -}}
{% endmacro %}
