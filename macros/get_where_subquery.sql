{#
    dbt's documented hook for the `where` config of tests, extended with one
    placeholder: `__latest_refresh__` becomes the relation's own latest
    `_refreshed_at`. Tests on large incremental tables use it to check the rows
    the last run wrote (older rows were checked when they were written):

        config:
          where: "_refreshed_at = __latest_refresh__"

    A relation without that column (a plain table) is tested whole.
#}
{% macro get_where_subquery(relation) -%}
    {%- set where = config.get('where') -%}
    {%- if where and '__latest_refresh__' in where and execute -%}
        {#- A model without _refreshed_at (a plain table mart) is tested whole. -#}
        {%- set names = adapter.get_columns_in_relation(relation) | map(attribute='name') | list -%}
        {%- if '_refreshed_at' not in names -%}
            {%- do return(relation) -%}
        {%- endif -%}
    {%- endif -%}
    {%- if where -%}
        {%- set where = where | replace(
            '__latest_refresh__',
            '(select max(latest._refreshed_at) from ' ~ relation ~ ' as latest)'
        ) -%}
        {%- do return('(select * from ' ~ relation ~ ' where ' ~ where ~ ') as dbt_subquery') -%}
    {%- else -%}
        {%- do return(relation) -%}
    {%- endif -%}
{%- endmacro %}
