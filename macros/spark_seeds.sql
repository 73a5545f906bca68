{#
    Seeds on Spark are read from the lake, like the raw data and the ledger:
    `elt run` writes each seed's CSV as lake/seeds/<seed>/<seed>.parquet
    (loaders/lake.py: every column text, as seeds/_seeds.yml declares them),
    and the seed's table here is an external table over that folder, made
    anew each run (dropping it leaves the file). So the Spark target reads
    nothing from the DuckDB file, nor values pasted into SQL: dbt-spark
    1.11's session connection pasted seed values unescaped (a station name
    with an apostrophe broke the statement, an empty cell became 'None').
    DuckDB keeps dbt's own seed materialization, from the project's CSV.
#}
{% materialization seed, adapter='spark' %}

    {%- set target_relation = this.incorporate(type='table') -%}
    {%- set location = env_var('ELT_LAKE_ROOT') ~ '/seeds/' ~ model['alias'] -%}

    {{ run_hooks(pre_hooks) }}

    {%- do run_query('create schema if not exists ' ~ target_relation.schema) -%}
    {%- do run_query('drop table if exists ' ~ target_relation) -%}
    {% call statement('main') %}
        create table {{ target_relation }} using parquet location '{{ location }}'
    {% endcall %}

    {#- dbt's seed result shows the rows loaded: here, the rows Spark reads from the lake. -#}
    {%- set rows = run_query('select * from ' ~ target_relation) -%}
    {%- do store_result('agate_table', response='OK', agate_table=rows) -%}
    {%- do persist_docs(target_relation, model) -%}

    {{ run_hooks(post_hooks) }}

    {{ return({'relations': [target_relation]}) }}

{% endmaterialization %}
